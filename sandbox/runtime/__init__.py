"""The sandbox's stand-in for a pod's containers: in-memory filesystems,
environments, log buffers and a built-in command interpreter."""

from __future__ import annotations

from sandbox.runtime.pod import (
    LOG_EVERY_ANNOTATION,
    PORTFORWARD_ANNOTATION_PREFIX,
    Container,
    ContainerNotFound,
    PodRuntime,
    PortForwardError,
)
from sandbox.runtime.process import ProcessIO

__all__ = [
    "LOG_EVERY_ANNOTATION",
    "PORTFORWARD_ANNOTATION_PREFIX",
    "Container",
    "ContainerNotFound",
    "PodRuntime",
    "PortForwardError",
    "ProcessIO",
]
