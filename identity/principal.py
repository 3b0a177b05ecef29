"""The identity a validated token proves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Principal:
    """Who a validated OIDC token speaks for.

    Attributes:
        oid: object id of the user or service principal (``oid``, else ``sub``).
        upn: ``upn``, else ``preferred_username`` (v2), else ``unique_name``
            (v1); ``None`` for apps.
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
    def app_id(self) -> str | None:
        """Client (application) id the token was issued to: ``azp`` in Entra
        v2 tokens, ``appid`` in v1."""
        value = self.claims.get("azp") or self.claims.get("appid")
        return value if isinstance(value, str) else None

    @property
    def immutable_ids(self) -> frozenset[str]:
        """Ids that name this principal and cannot be changed by whoever
        controls its profile: the ``oid`` claim, ``<iss>#<sub>`` (a ``sub`` is
        unique only within its issuer; the form is the API server's default
        ``--oidc-username-prefix``), and the group object ids. ``upn``,
        ``preferred_username`` and ``email`` are mutable in Entra ("nOAuth")
        and are never among them."""
        ids = set(self.groups)
        oid = self.claims.get("oid")
        if isinstance(oid, str) and oid:
            ids.add(oid)
        sub = self.claims.get("sub")
        if isinstance(sub, str) and sub:
            ids.add(f"{self.issuer}#{sub}")
        return frozenset(ids)

    def claim_values(self, names: Iterable[str]) -> frozenset[str]:
        """The non-empty string values of the claims ``names`` (for an opt-in
        match on mutable claims such as ``upn``)."""
        return frozenset(v for n in names if isinstance(v := self.claims.get(n), str) and v)

    @property
    def name(self) -> str:
        """The best display name: upn, else the object id."""
        return self.upn or self.oid
