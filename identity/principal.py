"""The identity a validated token proves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Principal:
    """Who a validated OIDC token speaks for.

    Attributes:
        oid: object id of the user or service principal (``oid``, else ``sub``).
        upn: ``upn``, else ``preferred_username``; ``None`` for apps.
        tid: tenant id (``tid``), ``None`` when the issuer has no tenants.
        groups: group ids, resolved through the group source when the token
            carried the overage form instead of ``groups``.
        issuer: the trusted issuer URL that signed the token (exact ``iss``).
        expires_at: ``exp`` as seconds since the epoch (UTC).
        claims: every claim of the token, as signed (read-only view).
        has_group_overage: the token carried ``_claim_names.groups`` (its
            groups came from the group source, not from the token).
    """

    oid: str
    upn: str | None
    tid: str | None
    groups: tuple[str, ...]
    issuer: str
    expires_at: float
    claims: Mapping[str, Any] = field(repr=False)
    has_group_overage: bool = False

    @property
    def is_app(self) -> bool:
        """True for an application (service principal) token: Entra's ``idtyp: app``."""
        return self.claims.get("idtyp") == "app"

    @property
    def name(self) -> str:
        """The best display name: upn, else the object id."""
        return self.upn or self.oid
