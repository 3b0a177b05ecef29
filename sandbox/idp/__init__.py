"""The development OIDC issuer (Entra-v2-shaped) used by the demo and tests.

``python -m sandbox.idp --port 0 --state-dir D [--users FILE] --ready-file F``
or, in process, :class:`SandboxIdp` (docs/INTERFACES.md §2).
"""

from __future__ import annotations

from sandbox.idp.server import SandboxIdp
from sandbox.idp.tokens import DEFAULT_AUDIENCE
from sandbox.idp.users import DEMO_USERS_FILE, Directory, DirectoryError, load_directory

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEMO_USERS_FILE",
    "Directory",
    "DirectoryError",
    "SandboxIdp",
    "load_directory",
]
