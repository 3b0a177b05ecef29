"""Token acquisition for the user: OIDC token endpoint grants (password,
client credentials with a secret, a certificate or a federated token file,
refresh), an external ``token_command``, or a fixed token.

Tokens are never logged nor put into an error message.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from certs import client_ssl_context, write_secret_file
from client.config import AuthConfig
from client.errors import AuthError, ConfigError

__all__ = ["CachedTokenSource", "Token", "TokenSource", "ssl_context_for"]

log = logging.getLogger("client")

# Refresh this long before expiry so a token never expires in flight.
REFRESH_MARGIN = 60.0
HTTP_TIMEOUT = 15.0
TOKEN_COMMAND_TIMEOUT = 30.0


def ssl_context_for(ca_file: str | None, what: str) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_file`` (else the system store).

    Raises:
        ConfigError: the CA file cannot be read.
    """
    if not ca_file:
        return client_ssl_context(None)
    try:
        pem = Path(ca_file).expanduser().read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {what} CA file {ca_file}: {err.strerror}") from None
    return client_ssl_context(pem)


@dataclass(frozen=True)
class Token:
    """An access token and when it stops being valid (epoch seconds)."""

    access_token: str
    expires_at: float
    refresh_token: str | None = None
    # When it was obtained (0: unknown); short-lived tokens renew earlier in
    # proportion to their lifetime instead of at a fixed margin they never clear.
    issued_at: float = 0.0

    def margin(self) -> float:
        """Seconds before expiry at which this token is renewed: ``REFRESH_MARGIN``,
        or a quarter of the lifetime when that is shorter."""
        if self.issued_at <= 0 or self.expires_at <= self.issued_at:
            return REFRESH_MARGIN
        return min(REFRESH_MARGIN, (self.expires_at - self.issued_at) / 4)

    def renew_at(self) -> float:
        """Epoch seconds after which the token should be replaced."""
        return self.expires_at - self.margin()

    def fresh(self, margin: float | None = None) -> bool:
        return time.time() + (self.margin() if margin is None else margin) < self.expires_at


def _expiry(access_token: str, expires_in: object) -> float:
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
        if isinstance(claims.get("exp"), (int, float)):
            return float(claims["exp"])
    except jwt.PyJWTError:
        pass  # opaque token: fall back to expires_in
    if isinstance(expires_in, int | float | str):
        try:
            return time.time() + float(expires_in)
        except ValueError:
            pass
    return time.time() + 300.0


class TokenSource:
    """Gets and refreshes the user's token per the client config ``auth``.

    Call :meth:`get` whenever a token is needed; it returns the cached one
    while fresh, refreshes with the refresh token when it can, and falls back
    to the configured grant.
    """

    def __init__(self, auth: AuthConfig, *, static_token: str | None = None,
                 extra_form: dict[str, str] | None = None) -> None:
        self._auth = auth
        # Sent with every grant (proof-of-possession's token_type/req_cnf, client/pop.py).
        self._extra_form = dict(extra_form or {})
        self._token: Token | None = None
        if static_token is not None:
            self._token = Token(static_token, _expiry(static_token, 10 * 365 * 86400))
        self._static = static_token is not None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        """A valid access token.

        Raises:
            AuthError: no token could be obtained.
            ConfigError: the config names no way to get one.
        """
        return (await self.get_token()).access_token

    async def get_token(self) -> Token:
        """Like :meth:`get` but with the expiry (for ExecCredential)."""
        async with self._lock:
            if self._token is not None and (self._static or self._token.fresh()):
                return self._token
            self._token = await self._acquire(self._token)
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (the relay refused it)."""
        if not self._static:
            self._token = None

    async def _acquire(self, old: Token | None) -> Token:
        a = self._auth
        if a.token_command:
            return await self._run_command(a.token_command)
        from client.client_credentials import uses_client_credentials  # imports this module

        if uses_client_credentials(a):
            return await self._client_credentials(a)
        if a.issuer and not a.token_endpoint:
            return await self._from_login(a)
        if not a.token_endpoint:
            raise ConfigError("client config has no auth.token_endpoint nor auth.token_command: "
                              "add one, or pass --token")
        base = {"client_id": a.client_id or "arc-cli", "scope": a.scope, **a.token_parameters(), **self._extra_form}
        if a.lifetime:
            base["lifetime"] = str(a.lifetime)  # sandbox issuer extension (tests: short tokens)
        if old is not None and old.refresh_token:
            try:
                return await self._post({**base, "grant_type": "refresh_token",
                                         "refresh_token": old.refresh_token})
            except AuthError:
                log.info("token refresh refused; using the configured grant again")
        if not a.username:
            raise ConfigError("client config auth has neither username/password nor a client credential: "
                              "add one, set auth.token_command, or pass --token")
        if a.password is None:
            raise ConfigError("client config auth.username is set but auth.password is not")
        form = {**base, "grant_type": "password", "username": a.username, "password": a.password}
        return await self._post(form)

    async def _client_credentials(self, auth: AuthConfig) -> Token:
        # No refresh token in this grant: every renewal authenticates the
        # client again, reading its credential files afresh (they rotate).
        from client.client_credentials import client_authentication, client_id_of, issuer_of
        from client.oidc_discovery import discover  # imports this module

        client_id = client_id_of(auth)
        endpoint = auth.token_endpoint
        if not endpoint:
            issuer = issuer_of(auth)
            if issuer is None:
                raise ConfigError("the client-credentials grant needs auth.token_endpoint or auth.issuer in "
                                  "the client config (or $AZURE_AUTHORITY_HOST and $AZURE_TENANT_ID)")
            endpoint = (await discover(issuer, auth.ca_file)).token_endpoint
        form = {"grant_type": "client_credentials", "client_id": client_id, "scope": auth.scope,
                **auth.token_parameters(), **self._extra_form, **client_authentication(auth, client_id, endpoint)}
        if auth.lifetime:
            form["lifetime"] = str(auth.lifetime)
        return await self._post(form, endpoint)

    async def _from_login(self, auth: AuthConfig) -> Token:
        # `arcctl login`'s cache, refreshed silently; a needed sign-in is an
        # error naming `arcctl login` (a daemon such as arc-proxy cannot prompt).
        from client.login import cached_token  # login imports this module
        from client.token_cache import TokenCache

        if auth.signed_in_scopes is not None:  # AuthConfig.for_relay()
            return await self._relay_from_login(auth, auth.signed_in_scopes)
        account = await cached_token(auth, TokenCache(), interactive=False)
        return Token(account.access_token, account.expires_at, issued_at=account.issued_at)

    async def _relay_from_login(self, auth: AuthConfig, signed_in_scopes: list[str]) -> Token:
        # The login account holds the cluster token (kubectl's); the relay's is
        # asked for with its refresh token and cached apart, as client/pop.py does.
        from client.oidc_discovery import discover  # imports this module

        assert auth.issuer is not None  # _acquire's condition
        endpoints = await discover(auth.issuer, auth.ca_file)
        derived = replace(auth, token_endpoint=endpoints.token_endpoint, signed_in_scopes=None,
                          scope=" ".join([auth.scope, "openid", "profile", "offline_access"]))
        return await token_from_login(
            derived, replace(auth, scopes=signed_in_scopes, signed_in_scopes=None), interactive=False,
            needs="the relay's token needs", refused="a token for the relay's audience (auth.relay_scope)")

    async def _post(self, form: dict[str, str], url: str | None = None) -> Token:
        url = url or self._auth.token_endpoint or ""
        ctx = ssl_context_for(self._auth.ca_file, "identity provider")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as s:
                async with s.post(url, data=form, ssl=ctx) as resp:
                    body: dict[str, Any] = {}
                    try:
                        body = await resp.json(content_type=None)
                    except (ValueError, aiohttp.ContentTypeError):
                        pass
                    if resp.status != 200 or "access_token" not in body:
                        code = body.get("error") or f"HTTP {resp.status}"
                        raise AuthError(f"the identity provider refused the {form['grant_type']} "
                                        f"grant ({code}): check auth in the client config")
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise AuthError(f"cannot reach the identity provider at {url} "
                            f"({type(err).__name__}): is it running?") from None
        access = str(body["access_token"])
        log.info("token acquired via %s grant", form["grant_type"])
        return Token(access, _expiry(access, body.get("expires_in")), body.get("refresh_token"),
                     issued_at=time.time())

    async def _run_command(self, command: str) -> Token:
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(command), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(proc.communicate(), TOKEN_COMMAND_TIMEOUT)
        except (TimeoutError, OSError) as err:
            raise AuthError(f"auth.token_command failed to run ({type(err).__name__})") from None
        token = out.decode(errors="replace").strip()
        if proc.returncode != 0 or not token:
            raise AuthError(f"auth.token_command exited with {proc.returncode} and printed no token")
        return Token(token, _expiry(token, 300), issued_at=time.time())


def _cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cluster-connect" / "tokens"


def _cache_key(auth: AuthConfig, extra_form: dict[str, str]) -> str:
    import hashlib

    ident = "\0".join(str(x) for x in (auth.token_endpoint, auth.client_id, auth.scope,
                                        auth.username, auth.token_command, auth.lifetime))
    workload = (auth.issuer, auth.login, auth.client_certificate_file, auth.federated_token_file)
    if any(workload[2:]) or auth.login == "client_credentials":  # keeps older configs' cache files
        ident += "\0" + "\0".join(str(x) for x in workload)
    if extra_form:  # a token bound to a key is another token than the bearer one
        ident += "\0" + "\0".join(f"{k}={v}" for k, v in sorted(extra_form.items()))
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


class CachedTokenSource(TokenSource):
    """A :class:`TokenSource` that keeps the token in a private file between
    processes (``arcctl get-token`` runs once per kubectl call; without a cache
    every kubectl call would be a round trip to the identity provider). The
    file is mode 0600 in ``$XDG_CACHE_HOME/cluster-connect/tokens``, like
    other CLIs' token caches."""

    def __init__(self, auth: AuthConfig, cache_dir: Path | None = None, *,
                 extra_form: dict[str, str] | None = None) -> None:
        super().__init__(auth, extra_form=extra_form)
        self._path = (cache_dir or _cache_dir()) / f"{_cache_key(auth, self._extra_form)}.json"
        self._load()

    @property
    def path(self) -> Path:
        """The cache file of this config's token."""
        return self._path

    def _load(self) -> None:
        import json

        try:
            doc = json.loads(self._path.read_text())
            self._token = Token(str(doc["access_token"]), float(doc["expires_at"]),
                                doc.get("refresh_token"), float(doc.get("issued_at", 0.0)))
        except (OSError, ValueError, KeyError, TypeError):
            self._token = None  # no cache or a damaged one: acquire afresh

    def seed_refresh_token(self, refresh_token: str) -> None:
        """Start from ``refresh_token`` when nothing is cached (a bound token
        renewed from ``arcctl login``'s account, client/pop.py)."""
        if self._token is None:
            self._token = Token("", 0.0, refresh_token)

    async def get_token(self) -> Token:
        before = self._token
        token = await super().get_token()
        if token is not before:
            self._save(token)
        return token

    def _save(self, token: Token) -> None:
        import json

        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_secret_file(self._path, json.dumps(
                {"access_token": token.access_token, "expires_at": token.expires_at,
                 "refresh_token": token.refresh_token, "issued_at": token.issued_at}))
        except OSError as err:
            log.debug("token cache not written: %s", err.strerror)


async def token_from_login(derived: AuthConfig, login_auth: AuthConfig, *, interactive: bool, needs: str,
                           refused: str, extra_form: dict[str, str] | None = None) -> Token:
    """A token for ``derived`` (another audience, or bound to a key: ``extra_form``)
    asked for with the refresh token of ``arcctl login``'s account (``login_auth``)
    and cached apart from the account's own token, so that kubectl's token, the
    relay's and a bound one never overwrite each other.

    Raises:
        AuthError: no refresh token, or the issuer refused; ``needs`` and
            ``refused`` name what the token was for in the message.
    """
    from client.login import cached_token  # login imports this module
    from client.token_cache import TokenCache

    source = CachedTokenSource(derived, extra_form=extra_form)
    if source.path.exists():
        try:
            return await source.get_token()
        except (AuthError, ConfigError):
            pass  # its refresh token ran out: start again from the login account
    account = await cached_token(login_auth, TokenCache(), interactive=interactive)
    if not account.refresh_token:
        raise AuthError(f"the identity provider gave `arcctl login` no refresh token, which {needs}: "
                        "add offline_access to auth.scopes and run `arcctl login`")
    source = CachedTokenSource(derived, extra_form=extra_form)
    source.seed_refresh_token(account.refresh_token)
    try:
        return await source.get_token()
    except ConfigError:  # the refresh grant was refused and no other grant is configured
        raise AuthError(f"the identity provider refused {refused}: run `arcctl login` again") from None
