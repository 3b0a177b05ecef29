"""The sandbox issuer's directory: tenant, groups, users, service principals.

Loaded from YAML (see ``demo-users.yaml`` next to this file for the format).
Errors in the file raise :class:`DirectoryError` with one line naming the
entry and the fix.
"""

from __future__ import annotations

import hmac
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEMO_USERS_FILE = Path(__file__).with_name("demo-users.yaml")
# Entra puts at most 200 groups in a JWT; more and it sends the overage form.
GROUPS_CLAIM_LIMIT = 200
# Entra's default audience of federated tokens (kubelogin, azure-workload-identity).
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"
# uuid5 namespace for generated_groups, so ids are the same on every machine.
_GENERATED_NS = uuid.UUID("3ca55096-aa81-423f-8938-0bb921796de0")


class DirectoryError(ValueError):
    """The users file is unusable (message: one line, cause and fix)."""


@dataclass(frozen=True)
class User:
    """A demo user who signs in with username and password."""

    username: str
    password: str
    oid: str
    name: str
    groups: tuple[str, ...]
    token_lifetime: int | None = None


@dataclass(frozen=True)
class FederatedCredential:
    """A federation trust of an application (Entra's "federated identity
    credential"): a token from ``issuer`` whose ``sub`` is ``subject`` and
    whose ``aud`` is ``audience`` authenticates the application.

    ``public_key_pem`` is the external issuer's signing key. Entra fetches it
    from the issuer's discovery document; the sandbox is given it in the users
    file, so tests can play a Kubernetes service-account issuer with a local key.
    """

    issuer: str
    subject: str
    audience: str
    public_key_pem: bytes


@dataclass(frozen=True)
class ServicePrincipal:
    """An application identity (client credentials; tokens carry ``idtyp: app``).

    A confidential client authenticates with its secret, a ``private_key_jwt``
    assertion signed by the key of one of ``certificates`` (PEM), or a
    federated token matching one of ``federated_credentials``.
    """

    name: str
    client_id: str
    client_secret: str | None  # None: no secret (public client, or certificate/federation only)
    oid: str
    groups: tuple[str, ...] = ()
    token_lifetime: int | None = None
    certificates: tuple[bytes, ...] = ()
    federated_credentials: tuple[FederatedCredential, ...] = ()

    def secret_matches(self, secret: str) -> bool:
        """Constant-time comparison of a presented client secret."""
        return self.client_secret is not None and hmac.compare_digest(
            self.client_secret.encode(), secret.encode()
        )


@dataclass(frozen=True)
class Directory:
    """Everything the issuer knows about identities."""

    tenant_id: str
    groups: dict[str, str]  # display name -> id
    users: tuple[User, ...]
    service_principals: tuple[ServicePrincipal, ...]
    public_clients: tuple[ServicePrincipal, ...]

    def find_user(self, name: str) -> User | None:
        """A user by username (case-insensitive), local part, or object id."""
        low = name.lower()
        for u in self.users:
            if low in (u.username.lower(), u.username.split("@")[0].lower(), u.oid):
                return u
        return None

    def find_app(self, name: str) -> ServicePrincipal | None:
        """A service principal or public client by client id, name or object id."""
        for sp in self.service_principals + self.public_clients:
            if name in (sp.client_id, sp.name, sp.oid):
                return sp
        return None

    def groups_of(self, oid: str) -> tuple[str, ...] | None:
        """All group ids of a user or service principal, None if unknown."""
        for user in self.users:
            if user.oid == oid:
                return user.groups
        for app in self.service_principals:
            if app.oid == oid:
                return app.groups
        return None


def load_directory(path: str | os.PathLike[str] | None = None) -> Directory:
    """Load a users file; None loads the built-in demo directory.

    Raises:
        DirectoryError: unreadable file or invalid entry.
    """
    source = Path(path) if path is not None else DEMO_USERS_FILE
    try:
        doc = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DirectoryError(f"cannot read users file {source}: {type(exc).__name__}") from exc
    if not isinstance(doc, dict):
        raise DirectoryError(f"users file {source}: expected a mapping at the top level")
    tenant = _uuid(doc.get("tenant_id"), f"{source}: tenant_id")
    names = doc.get("groups") or {}
    if not isinstance(names, dict):
        raise DirectoryError(f"{source}: groups must map display names to ids")
    groups = {str(k): _uuid(v, f"{source}: group {k}") for k, v in names.items()}

    def group_ids(entry: dict[str, Any], who: str) -> tuple[str, ...]:
        raw = entry.get("groups") or []
        if not isinstance(raw, list):
            raise DirectoryError(f"{source}: {who}: groups must be a list")
        ids = [groups.get(str(g)) or _uuid(g, f"{source}: {who}: group {g}") for g in raw]
        extra = entry.get("generated_groups", 0)
        if not isinstance(extra, int) or extra < 0:
            raise DirectoryError(f"{source}: {who}: generated_groups must be a count")
        ids += [str(uuid.uuid5(_GENERATED_NS, f"{who}/{i}")) for i in range(extra)]
        return tuple(dict.fromkeys(ids))

    users = tuple(
        User(
            username=_text(e, "username", source),
            password=_text(e, "password", source),
            oid=_uuid(e.get("oid"), f"{source}: {e.get('username')}: oid"),
            name=str(e.get("name") or e["username"]),
            groups=group_ids(e, str(e["username"])),
            token_lifetime=e.get("token_lifetime"),
        )
        for e in _entries(doc, "users", source)
    )
    sps = tuple(_app(e, source, group_ids, public=False) for e in _entries(doc, "service_principals", source))
    public = tuple(_app(e, source, group_ids, public=True) for e in _entries(doc, "public_clients", source))
    return Directory(tenant, groups, users, sps, public)


def _entries(doc: dict[str, Any], key: str, source: Path) -> list[dict[str, Any]]:
    raw = doc.get(key) or []
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise DirectoryError(f"{source}: {key} must be a list of mappings")
    return raw


def _app(e: dict[str, Any], source: Path, group_ids: Any, *, public: bool) -> ServicePrincipal:
    client_id = _text(e, "client_id", source)
    certificates = () if public else tuple(_pem(source, f"{client_id}: certificates", c)
                                           for c in _list(e, "certificates", source))
    federated = () if public else tuple(_federated(source, client_id, f)
                                        for f in _list(e, "federated_credentials", source))
    secret = None
    if not public and ("client_secret" in e or not (certificates or federated)):
        secret = _text(e, "client_secret", source)
    return ServicePrincipal(
        name=str(e.get("name") or client_id),
        client_id=client_id,
        client_secret=secret,
        oid=_uuid(e.get("oid", client_id), f"{source}: {client_id}: oid"),
        groups=() if public else group_ids(e, client_id),
        token_lifetime=e.get("token_lifetime"),
        certificates=certificates,
        federated_credentials=federated,
    )


def _list(e: dict[str, Any], key: str, source: Path) -> list[Any]:
    raw = e.get(key) or []
    if not isinstance(raw, list):
        raise DirectoryError(f"{source}: {e.get('client_id')}: {key} must be a list")
    return raw


def _pem(source: Path, where: str, value: Any) -> bytes:
    """PEM text given inline or as a file path (relative to the users file)."""
    if not isinstance(value, str) or not value:
        raise DirectoryError(f"{source}: {where}: expected PEM text or a file path")
    if "-----BEGIN " in value:
        return value.encode()
    path = source.parent / value
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DirectoryError(f"{source}: {where}: cannot read {path} ({exc.strerror})") from exc


def _federated(source: Path, client_id: str, f: Any) -> FederatedCredential:
    where = f"{client_id}: federated_credentials"
    if not isinstance(f, dict):
        raise DirectoryError(f"{source}: {where}: each entry must be a mapping")
    return FederatedCredential(
        issuer=_text(f, "issuer", source),
        subject=_text(f, "subject", source),
        audience=str(f.get("audience") or FEDERATION_AUDIENCE),
        public_key_pem=_pem(source, f"{where}: public_key", f.get("public_key")),
    )


def _text(entry: dict[str, Any], key: str, source: Path) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise DirectoryError(f"{source}: an entry lacks '{key}' (add it as a string)")
    return value


def _uuid(value: Any, where: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise DirectoryError(f"{where}: {value!r} is not a UUID (use the form 8-4-4-4-12)") from exc
