"""Header policy: what of a request head may reach the API server.

Order matters and is fixed:

1. every client-supplied ``Impersonate-*`` header is removed (any case, any
   suffix: User, Group, Uid, Extra-*), whatever path the request takes;
2. more than one ``Authorization`` header is refused (400): the two sides
   could pick different ones;
3. a bearer JWT from a trusted issuer is validated; the request then carries
   the agent's own token and impersonation headers we set (never appended to
   anything the client sent); an invalid one is refused (401), an unresolved
   group overage too (403, fail closed); reserved ``system:`` names are
   prefixed, dropped (groups) or refused (user name, 403): see names.py;
4. anything else (service-account tokens, client certificates, no
   credentials) goes on unchanged for the API server to judge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent.kube_aad_proxy.heads import RequestHead
from agent.kube_aad_proxy.names import MappedNames, NameMapper
from agent.kube_aad_proxy.oidc import OidcGate, PrincipalLike, token_key
from agent.kube_aad_proxy.pop import PopPolicy, binding_refusal, is_signed_request
from identity import GroupResolutionError, TokenInvalid

log = logging.getLogger("agent.kube_aad_proxy")

PASSTHROUGH = "passthrough"
UNAUTHENTICATED = "-"  # audit principal of a request refused before anyone was identified
_IMPERSONATE = b"impersonate-"
_AUTHORIZATION = b"authorization"


@dataclass(slots=True)
class Forward:
    """Send ``head`` upstream; ``principal`` is for the audit line."""

    head: bytes
    principal: str
    # Added as a ``Warning`` header when the API server answers 403: why
    # central roles did not count (kubectl prints it as ``Warning: ...``).
    warning_on_403: str | None = None


@dataclass(slots=True)
class Refuse:
    """Answer ``status`` with a Status body, forward nothing, close."""

    status: int
    message: str
    principal: str = UNAUTHENTICATED


@dataclass(slots=True)
class Validate:
    """The token needs a (network-bound) validation before a decision."""

    token: str
    headers: list[tuple[bytes, bytes]]
    # Thumbprint of the key that signed the proof-of-possession token around
    # ``token``; None for a bare bearer token.
    pop_key: str | None = None
    # A proof-of-possession refusal decided already (401 with this message).
    # It is sent from the slow path: kubectl was seen to miss a refusal sent
    # from decide() itself (e2e: the response never reached it).
    refusal: str | None = None


Decision = Forward | Refuse | Validate

# Groups only central RBAC may set (agent/central_rbac_objects.py): a token
# claiming one has it dropped, whatever its issuer.
CENTRAL_GROUP_PREFIX = "arc-central:"


class CentralGroups(Protocol):
    """Central Kubernetes roles (agent/central_rbac.py), asked per request."""

    def groups_for(self, issuer: str, user_ids: Iterable[str],
                   group_ids: Iterable[str]) -> tuple[tuple[str, ...], str]:
        """(groups to impersonate for a token of ``issuer``, what the audit line says)."""
        ...

    def use_names(self, names: NameMapper) -> None:
        """Name central groups as kube-aad-proxy names principals (``names``)."""
        ...

    def stale_warning(self) -> str | None:
        """Why central roles count for nothing now (list stale), else None."""
        ...


def _claims_overage(claims: Mapping[str, Any]) -> bool:
    names = claims.get("_claim_names")
    return isinstance(names, Mapping) and "groups" in names


def _header_value(value: str) -> bytes | None:
    """Encode a claim as a header value; None if it could break the head."""
    b = value.encode("utf-8")
    if not b or any(c < 0x20 or c == 0x7F for c in b):
        return None
    return b


class HeaderPolicy:
    """Applies the policy above to one request head at a time.

    Args:
        gate: The OIDC gate, or None for pure pass-through.
        upstream_token: The agent's own bearer token (OIDC path only).
        impersonate_with: ``"oid"`` or ``"upn"``.
    """

    def __init__(self, gate: OidcGate | None, upstream_token: str | None, impersonate_with: str,
                 names: NameMapper | None = None, pop: PopPolicy | None = None) -> None:
        self.gate = gate
        self.pop = pop or PopPolicy(frozenset())
        self._auth = f"Bearer {upstream_token}".encode() if upstream_token else b""
        self._with = impersonate_with
        self._names = names or NameMapper()
        # Set by arc-agent when central RBAC is wired (None: no central groups).
        self.central: CentralGroups | None = None

    def use_central(self, central: CentralGroups) -> None:
        """Add ``central``'s groups from the next request head on; it names
        them with this policy's issuer prefixes, now and after each reload."""
        self.central = central
        central.use_names(self._names)

    def use(self, gate: OidcGate | None, names: NameMapper) -> None:
        """Decide with ``gate`` and ``names`` from the next request head on (a reload)."""
        self.gate = gate
        self._names = names
        if self.central is not None:
            self.central.use_names(names)

    def decide(self, head: RequestHead) -> Decision:
        """Decide without waiting; returns :class:`Validate` when :meth:`finish` must run."""
        kept: list[tuple[bytes, bytes]] = []
        auth: list[bytes] = []
        stripped = False
        for name, value in head.headers:
            lower = name.lower()
            if lower.startswith(_IMPERSONATE):
                stripped = True
                continue
            if lower == _AUTHORIZATION:
                auth.append(value)
            kept.append((name, value))
        if stripped:
            log.info("stripped client Impersonate-* headers method=%s path=%s", head.method, head.path)
        if len(auth) > 1:
            log.warning("refused: %d Authorization headers path=%s", len(auth), head.path)
            return Refuse(400, "more than one Authorization header")
        if self.gate is not None and auth and auth[0][:7].lower() == b"bearer ":
            token = auth[0][7:].strip().decode("latin-1")
            pop_key: str | None = None
            if is_signed_request(token):  # proof-of-possession (pop.py): never passed through
                try:
                    shr = self.pop.unwrap(token)
                except TokenInvalid as exc:
                    log.warning("refused: invalid proof-of-possession token reason=%s path=%s",
                                exc.reason, head.path)
                    return Validate(token, [], refusal=f"invalid proof-of-possession token: {exc.reason}")
                token, pop_key = shr.access_token, shr.key_id
            key = token_key(token)
            # A token validated before is ours without a second look (one lookup per request).
            principal = self.gate.cached(key)
            if principal is not None or pop_key is not None or self.gate.is_ours(token, key):
                without_auth = [(n, v) for n, v in kept if n.lower() != _AUTHORIZATION]
                if principal is None:
                    if pop_key is None and self.pop.required:
                        log.warning("refused: bare bearer token where proof-of-possession is required "
                                    "path=%s", head.path)
                        return Validate(token, [], refusal="this cluster requires proof-of-possession tokens "
                                                           "(arcctl get-token --pop)")
                    return Validate(token, without_auth, pop_key)
                if binding_refusal(self.pop, principal.claims, pop_key) is not None:
                    return Validate(token, without_auth, pop_key)  # finish() refuses it
                return self._impersonate(head, without_auth, principal, pop_key)
        if not stripped:
            return Forward(head.raw, PASSTHROUGH)  # byte for byte
        return Forward(_build(head.raw, kept, []), PASSTHROUGH)

    async def finish(self, head: RequestHead, pending: Validate) -> Forward | Refuse:
        """Validate the token of a :class:`Validate` decision and decide."""
        assert self.gate is not None
        if pending.refusal is not None:
            return Refuse(401, pending.refusal)
        try:
            principal = await self.gate.validate(pending.token)
        except GroupResolutionError as exc:
            log.warning("refused: groups unresolved reason=%s path=%s", exc.reason, head.path)
            return Refuse(403, f"group membership could not be resolved: {exc.reason}")
        except TokenInvalid as exc:
            # identity reports an unresolved overage as TokenInvalid("group overage ...");
            # the token itself is fine, the caller's groups are unknown: 403, fail closed.
            if "group overage" in exc.reason:
                log.warning("refused: groups unresolved reason=%s path=%s", exc.reason, head.path)
                return Refuse(403, f"group membership could not be resolved: {exc.reason}")
            log.warning("refused: invalid token reason=%s path=%s", exc.reason, head.path)
            return Refuse(401, f"invalid bearer token: {exc.reason}")
        except Exception as exc:  # a validator bug must not let the request through
            log.error("token validation error kind=%s path=%s", exc.__class__.__name__, head.path)
            return Refuse(401, "invalid bearer token: validation failed")
        mapped = self._map(principal)
        if mapped.username is None or mapped.dropped_groups:
            # Once per validated token, not per request: the cache serves the rest.
            log.warning("reserved names in token principal=%s username_refused=%s dropped_groups=%d",
                        principal.oid, mapped.username is None, mapped.dropped_groups)
        return self._impersonate(head, pending.headers, principal, pending.pop_key)

    def _user_claim(self, p: PrincipalLike) -> str | None:
        return p.oid if self._with == "oid" else p.upn

    def _map(self, p: PrincipalLike) -> MappedNames:
        return self._names.map(getattr(p, "issuer", ""), self._user_claim(p) or "", p.groups)

    def _impersonate(
        self, head: RequestHead, headers: list[tuple[bytes, bytes]], p: PrincipalLike, pop_key: str | None
    ) -> Forward | Refuse:
        user_claim = self._user_claim(p)
        mapped = self._map(p)
        # Audit under the name the API server will see (its own audit log then lines up).
        name = mapped.username or p.oid
        refusal = binding_refusal(self.pop, p.claims, pop_key)
        if refusal is not None:
            log.warning("refused: %s principal=%s path=%s", refusal, p.oid, head.path)
            return Refuse(401, refusal, name)
        if _claims_overage(p.claims) and not p.has_group_overage:
            # The token said "groups elsewhere" and nobody fetched them: fail closed.
            return Refuse(403, "token has a group overage and no group source resolved it", name)
        if not user_claim:
            return Refuse(403, f"token has no {self._with} claim to impersonate", name)
        if mapped.username is None:
            return Refuse(403, f"token {self._with} {user_claim[:100]!r} is a reserved Kubernetes name "
                               "(system:); set username_prefix on this issuer in kube_aad_proxy.oidc",
                          UNAUTHENTICATED)
        user = _header_value(mapped.username)
        if user is None:
            return Refuse(403, "token identity is not a valid header value", name)
        extra: list[tuple[bytes, bytes]] = [(b"Authorization", self._auth), (b"Impersonate-User", user)]
        groups = [g for g in mapped.groups if not g.startswith(CENTRAL_GROUP_PREFIX)]
        audit_name = name
        warning: str | None = None
        if self.central is not None:
            central, said = self.central.groups_for(p.issuer, _user_ids(p), p.groups)
            groups += central
            audit_name = f"{name} central={said}"
            if not central:
                warning = self.central.stale_warning()
        for g in groups:
            gv = _header_value(g)
            if gv is None:
                return Refuse(403, "token group is not a valid header value", name)
            extra.append((b"Impersonate-Group", gv))
        for key, value in (("oid", p.oid), ("tid", p.tid)):
            if value:
                ev = _header_value(value)
                if ev is None:
                    return Refuse(403, "token identity is not a valid header value", name)
                extra.append((b"Impersonate-Extra-" + key.encode(), ev))
        return Forward(_build(head.raw, headers, extra), audit_name, warning)


def _user_ids(p: PrincipalLike) -> list[str]:
    """The ids a central User assignment may name, as the relay matches them:
    ``oid`` and ``<iss>#<sub>`` (identity.Principal.immutable_ids)."""
    ids = [p.oid] if p.oid else []
    sub = p.claims.get("sub")
    if isinstance(sub, str) and sub:
        ids.append(f"{p.issuer}#{sub}")
    return ids


def _build(raw: bytes, headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> bytes:
    """Request line as sent, then ``headers`` and ``extra``, then the blank line."""
    parts = [raw[: raw.index(b"\r\n") + 2]]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
