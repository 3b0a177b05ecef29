"""A Kubernetes API server stand-in for tests and demos: real TLS, REST,
watch, RBAC and impersonation, faithful enough for kubectl and the
``kubernetes`` Python client."""

from __future__ import annotations

from sandbox.apiserver.server import SandboxApiServer

__all__ = ["SandboxApiServer"]
