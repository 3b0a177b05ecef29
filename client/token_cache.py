"""The login token cache: one file, mode 0600, of the accounts ``arcctl login``
signed in, keyed by issuer + client id + account (``oid``, else ``sub``), and
the index that lets ``arcctl get-token``'s lean path find a config's token
(see :mod:`client.arcctl_entry`).

Each account keeps its access token, expiry, refresh token, and the claims
``arcctl account show`` prints. Writes are atomic (a temporary file renamed);
two processes writing at once lose one update, never the file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt

from certs import write_secret_file
from client.arcctl_entry import INDEX_FILE, cache_dir, fresh

__all__ = ["Account", "TokenCache", "account_from_token"]

LOGIN_FILE = "login-tokens.json"


@dataclass
class Account:
    """One signed-in account of one issuer and client."""

    issuer: str
    client_id: str
    account: str  # oid, else sub: immutable, unlike the user name
    access_token: str
    expires_at: float
    issued_at: float
    refresh_token: str | None = None
    name: str = ""
    username: str = ""
    tenant: str = ""
    scopes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return account_key(self.issuer, self.client_id, self.account)

    def fresh(self) -> bool:
        """Still usable without a refresh (more than the renew margin left)."""
        return fresh(self.expires_at, self.issued_at)

    def summary(self) -> dict[str, Any]:
        """What ``arcctl account show`` prints: who, where, until when; no token."""
        return {
            "name": self.name, "user": self.username, "account": self.account,
            "tenant": self.tenant, "issuer": self.issuer, "clientId": self.client_id,
            "scopes": self.scopes,
            "expiresOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at)),
            "refreshable": bool(self.refresh_token),
        }


def account_key(issuer: str, client_id: str, account: str) -> str:
    return f"{issuer} {client_id} {account}"


def _claims(token: str | None) -> dict[str, Any]:
    if not token:
        return {}
    try:
        # Shown to the user only, never trusted: the token came from the
        # issuer's token endpoint over verified TLS.
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return claims
    except jwt.PyJWTError:
        return {}


def account_from_token(issuer: str, client_id: str, body: dict[str, Any]) -> Account:
    """An :class:`Account` from a token endpoint response (``access_token``,
    ``expires_in``, ``refresh_token``, ``id_token``, ``scope``)."""
    access = str(body["access_token"])
    access_claims = _claims(access)
    claims = {**access_claims, **_claims(body.get("id_token"))}
    now = time.time()
    # The access token's own expiry: an id token may outlive it (oidc-provider:
    # an hour beside a short access token), and get-token hands out the latter.
    exp = access_claims.get("exp") if isinstance(access_claims.get("exp"), int | float) else None
    try:
        expires_at = float(exp) if exp is not None else now + float(body.get("expires_in", 300))
    except (TypeError, ValueError):
        expires_at = now + 300.0
    who = str(claims.get("oid") or claims.get("sub") or "unknown")
    scope = body.get("scope")
    return Account(
        issuer=issuer, client_id=client_id, account=who, access_token=access,
        expires_at=expires_at, issued_at=now, refresh_token=body.get("refresh_token"),
        name=str(claims.get("name", "")),
        username=str(claims.get("preferred_username") or claims.get("upn") or claims.get("email") or ""),
        tenant=str(claims.get("tid", "")),
        scopes=scope.split() if isinstance(scope, str) else [],
    )


class TokenCache:
    """The login cache and the lean path's index under ``directory``."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or Path(cache_dir())
        self.path = self.directory / LOGIN_FILE

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            doc = json.loads(path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}  # none yet, or damaged: start afresh

    def _write(self, path: Path, doc: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret_file(path, json.dumps(doc, indent=1))

    def accounts(self) -> list[Account]:
        out = []
        for raw in self._read(self.path).get("accounts", {}).values():
            try:
                out.append(Account(**raw))
            except TypeError:
                continue  # an entry of another version: ignored
        return out

    def current(self, issuer: str, client_id: str) -> Account | None:
        """The account last signed in for this issuer and client."""
        doc = self._read(self.path)
        key = doc.get("current", {}).get(f"{issuer} {client_id}")
        raw = doc.get("accounts", {}).get(key) if isinstance(key, str) else None
        try:
            return Account(**raw) if isinstance(raw, dict) else None
        except TypeError:
            return None

    def put(self, account: Account) -> None:
        """Store ``account`` and make it the current one of its issuer and client."""
        doc = self._read(self.path)
        doc.setdefault("accounts", {})[account.key] = asdict(account)
        doc.setdefault("current", {})[f"{account.issuer} {account.client_id}"] = account.key
        doc["version"] = 1
        self._write(self.path, doc)

    def remove(self, issuer: str | None, client_id: str | None) -> list[Account]:
        """Forget the current account of issuer + client (both None: every
        account). Returns what was removed."""
        doc = self._read(self.path)
        accounts: dict[str, Any] = doc.get("accounts", {})
        current: dict[str, str] = doc.get("current", {})
        if issuer is None:
            keys = list(accounts)
        else:
            key = current.get(f"{issuer} {client_id}")
            keys = [key] if key in accounts else []
        removed = []
        for key in keys:
            try:
                removed.append(Account(**accounts.pop(key)))
            except TypeError:
                pass
        doc["current"] = {k: v for k, v in current.items() if v in accounts}
        if removed or issuer is None:
            self._write(self.path, doc)
        return removed

    def index(self, config: str, file: Path, account: str | None) -> None:
        """Record where ``config``'s token is, for the lean ``get-token`` path."""
        try:
            mtime_ns = os.stat(config).st_mtime_ns
        except OSError:
            return
        path = self.directory / INDEX_FILE
        doc = self._read(path)
        configs = doc.setdefault("configs", {})
        entry = {"mtime_ns": mtime_ns, "file": str(file), "account": account}
        if configs.get(config) != entry:
            configs[config] = entry
            self._write(path, doc)
