"""Errors raised by :mod:`identity`.

Exception tree::

    IdentityError
    ├── TokenInvalid          a token was refused (reason: short, fixed text)
    └── GroupResolutionError  an overage group source could not answer

``reason`` strings are chosen from a small fixed vocabulary so they can be
used as metric labels and shown to callers; they never contain token text,
key material or exception messages from lower layers.
"""

from __future__ import annotations


class IdentityError(Exception):
    """Base class of every error raised by :mod:`identity`."""


class TokenInvalid(IdentityError):
    """A bearer token was refused.

    Attributes:
        reason: short, fixed, human-readable cause (e.g. ``"token expired"``);
            never contains the token or any part of it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"TokenInvalid({self.reason!r})"


class GroupResolutionError(IdentityError):
    """The member-groups source for an overage token failed.

    Attributes:
        reason: short cause, safe to log (no token, no credential).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
