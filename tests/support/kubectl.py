"""Find versioned kubectl binaries; tests that need one skip with a reason
when it is absent, and never pass without running it when it is there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# /usr/bin/kubectl on this project's machines is a dispatcher that picks a
# versioned binary from the server's /version; tests call the versions directly.
VERSIONED_DIRS = [Path("/usr/lib/google-cloud-sdk/bin")]


def kubectl_path(version: str | None = None) -> str | None:
    """Path of ``kubectl.<version>`` (e.g. ``1.27``) or of plain ``kubectl``."""
    if version is None:
        return shutil.which("kubectl")
    extra = os.environ.get("ARC_KUBECTL_DIR")
    for d in ([Path(extra)] if extra else []) + VERSIONED_DIRS:
        candidate = d / f"kubectl.{version}"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(f"kubectl.{version}")


def require_kubectl(version: str | None = None) -> str:
    """The binary's path, or skip the calling test with a clear reason."""
    path = kubectl_path(version)
    if path is None:
        name = f"kubectl.{version}" if version else "kubectl"
        pytest.skip(f"{name} not found (looked in {', '.join(map(str, VERSIONED_DIRS))} and PATH)")
    return path
