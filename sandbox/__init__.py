"""Test and demo stand-ins: a Kubernetes API server (:mod:`sandbox.apiserver`)
and a development OIDC issuer (:mod:`sandbox.idp`)."""

from __future__ import annotations

from typing import Any

from sandbox.apiserver import SandboxApiServer

__all__ = ["SandboxApiServer", "SandboxIdp"]


def __getattr__(name: str) -> Any:
    # Imported lazily so a missing or broken idp package never breaks the API server.
    if name == "SandboxIdp":
        from sandbox.idp import SandboxIdp

        return SandboxIdp
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
