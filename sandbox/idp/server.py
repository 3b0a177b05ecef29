"""``SandboxIdp``: the development OIDC issuer as an HTTPS server on loopback.

State (its CA, serving certificate and signing keys) lives in ``state_dir``
under ``idp-*`` names, so it can share a directory with the other sandbox
servers and a restarted issuer keeps its CA and keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from certs import CertificateAuthority, server_ssl_context
from sandbox.idp.handlers import IdpHandlers
from sandbox.idp.keys import DEFAULT_GRACE_PERIOD, SigningKey, SigningKeys
from sandbox.idp.tokens import DEFAULT_AUDIENCE, DEFAULT_LIFETIME, TokenMinter
from sandbox.idp.users import Directory, load_directory

log = logging.getLogger("sandbox.idp")


class SandboxIdp:
    """A development OIDC issuer shaped like Microsoft Entra ID (v2 endpoints).

    Call :meth:`start`, use :attr:`issuer`, :attr:`token_endpoint`, :meth:`mint`
    and :meth:`rotate_keys`, then :meth:`stop`.

    Args:
        state_dir: where the CA, serving certificate and signing keys are kept.
        users_file: YAML directory; None uses the built-in demo users.
        host: loopback address to listen on (``127.0.0.1`` or ``::1``).
        port: TCP port; 0 picks a free one.
        key_grace_period: seconds a rotated-out key stays in the JWKS.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        users_file: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key_grace_period: float = DEFAULT_GRACE_PERIOD,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.directory: Directory = load_directory(users_file)
        self._grace = key_grace_period
        self._runner: web.AppRunner | None = None
        self._minter: TokenMinter | None = None
        self._handlers: IdpHandlers | None = None
        self.ca_pem = b""
        self.ca_file = ""

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Create or load the CA and keys, then serve HTTPS. Raises OSError if
        the port is taken."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ca = self._load_ca()
        serving = ca.issue_server(["localhost"], ["127.0.0.1", "::1"], common_name="sandbox-idp")
        keys = SigningKeys(self.state_dir / "idp-signing-keys.json", grace_period=self._grace)
        # The issuer URL depends on the port, known only after binding, so
        # the handlers are attached to a mutable minter filled in below.
        minter = TokenMinter(self.directory, keys, "", "", self._default_client_id())
        handlers = IdpHandlers(minter)
        app = web.Application()
        app.add_routes(handlers.routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=server_ssl_context(serving))
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = _bound_port(runner)
        host = f"[{self.host}]" if ":" in self.host else self.host
        minter.base_url = f"https://{host}:{self.port}"
        minter.issuer = f"{minter.base_url}/{self.tenant_id}/v2.0"
        self._runner, self._minter, self._handlers = runner, minter, handlers
        log.info("idp serving issuer=%s", self.issuer)

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("idp stopped")

    async def __aenter__(self) -> SandboxIdp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _load_ca(self) -> CertificateAuthority:
        cert, key = self.state_dir / "idp-ca.crt", self.state_dir / "idp-ca.key"
        if cert.exists() and key.exists():
            ca = CertificateAuthority.load(cert.read_bytes(), key.read_bytes())
        else:
            ca = CertificateAuthority.create("cluster-connect sandbox idp CA")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(ca.private_key_pem)
            cert.write_bytes(ca.certificate_pem)
        self.ca_pem, self.ca_file = ca.certificate_pem, str(cert)
        return ca

    def _default_client_id(self) -> str:
        clients = self.directory.public_clients
        return clients[0].client_id if clients else "sandbox-cli"

    # -- what clients need -------------------------------------------------

    @property
    def _m(self) -> TokenMinter:
        if self._minter is None:
            raise RuntimeError("SandboxIdp is not started (await idp.start() first)")
        return self._minter

    @property
    def tenant_id(self) -> str:
        """The fixed tenant id from the users file."""
        return self.directory.tenant_id

    @property
    def url(self) -> str:
        """``https://host:port``: the issuer's origin."""
        return self._m.base_url

    @property
    def issuer(self) -> str:
        """``https://127.0.0.1:PORT/<tenant-id>/v2.0``."""
        return self._m.issuer

    @property
    def v1_issuer(self) -> str:
        """The ``iss`` of v1-shaped tokens (``https://sts.windows.net/<tid>/``)."""
        return self._m.v1_issuer

    @property
    def v1_discovery_url(self) -> str:
        """Where the v1 discovery document is (its ``issuer`` is :attr:`v1_issuer`)."""
        return f"{self.url}/{self.tenant_id}/.well-known/openid-configuration"

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def device_authorization_endpoint(self) -> str:
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/devicecode"

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/{self.tenant_id}/discovery/v2.0/keys"

    @property
    def cli_client_id(self) -> str:
        """The public client id for password, refresh and device-code grants."""
        return self._default_client_id()

    @property
    def request_counts(self) -> dict[str, int]:
        """Requests served so far by kind: discovery, jwks, token, member_groups, devicecode."""
        return dict(self._handlers.request_counts) if self._handlers else {}

    @property
    def accepted_assertions(self) -> list[tuple[str, str, str]]:
        """(client id, ``private_key_jwt``|``federated``, jti) of the client
        assertions accepted lately, oldest first (tests)."""
        return list(self._handlers.client_auth.accepted) if self._handlers else []

    def info(self) -> dict[str, Any]:
        """The ready-file JSON object."""
        return {
            "issuer": self.issuer,
            "url": self.url,
            "port": self.port,
            "tenant_id": self.tenant_id,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            "device_authorization_endpoint": self.device_authorization_endpoint,
            "cli_client_id": self.cli_client_id,
            "ca_file": self.ca_file,
            "ca_pem": self.ca_pem.decode(),
            "pid": os.getpid(),
        }

    # -- test helpers ------------------------------------------------------

    def mint(
        self,
        user: str = "demo",
        audience: str = DEFAULT_AUDIENCE,
        lifetime: int = DEFAULT_LIFETIME,
        *,
        key: SigningKey | Any = None,
        algorithm: str = "RS256",
        headers: dict[str, Any] | None = None,
        version: str = "2.0",
        **claim_overrides: Any,
    ) -> str:
        """A signed access token for a user (username, its local part, or
        oid) or a service principal (name, client id, or oid), as the token
        endpoint would issue it. ``claim_overrides`` replace claims; a value
        of None removes the claim (e.g. ``exp=None``). ``version="1.0"``: the
        Entra v1 shape (issuer :attr:`v1_issuer`, see ``TokenMinter.as_v1``)."""
        who = self.directory.find_user(user)
        if who is not None:
            claims = self._m.user_claims(who, audience, lifetime)
        else:
            app = self.directory.find_app(user)
            if app is None:
                raise KeyError(f"no user or service principal named {user!r}")
            claims = self._m.app_claims(app, audience, lifetime)
        if version == "1.0":
            claims = self._m.as_v1(claims)
        for name, value in claim_overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return self._m.sign(claims, headers=headers, key=key, algorithm=algorithm)

    def mint_raw(
        self,
        claims: dict[str, Any],
        headers: dict[str, Any] | None = None,
        key: SigningKey | Any = None,
        algorithm: str = "RS256",
    ) -> str:
        """Sign arbitrary ``claims`` (attack tests): any header, any key PyJWT
        accepts, bytes/str for HS256 (any secret, e.g. :attr:`public_key_pem`),
        ``algorithm="none"`` for an unsigned token.
        Without ``key`` the current signing key signs and its kid is set."""
        return self._m.sign(dict(claims), headers=headers, key=key, algorithm=algorithm)

    @property
    def signing_key(self) -> SigningKey:
        """The key signing new tokens (``public_jwk`` for its JWK)."""
        return self._m.keys.current

    @property
    def public_key_pem(self) -> bytes:
        """The current signing key's public half (SubjectPublicKeyInfo PEM)."""
        return self.signing_key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS as served."""
        return self._m.keys.jwks()

    def rotate_keys(self, *, drop_old: bool = False) -> str:
        """Sign with a new key from now on. Old keys stay published for the
        grace period, or are withdrawn now with ``drop_old``. Returns the new kid."""
        new = self._m.keys.rotate(drop_old=drop_old)
        log.info("signing key rotated kid=%s drop_old=%s", new.kid, drop_old)
        return new.kid

    def approve_device_code(self, user_code: str, user: str) -> bool:
        """Complete a pending device-code sign-in as ``user`` (tests)."""
        return self._handlers.approve_device(user_code, user) if self._handlers else False


def _bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or []:
            return int(sock.getsockname()[1])
    raise RuntimeError("idp did not bind a socket")
