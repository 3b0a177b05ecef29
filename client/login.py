"""``arcctl login``: interactive sign-in with the issuer named in the client
config, as ``az login`` and kubelogin do it.

* device code (RFC 8628): the code and the URL go to stderr; the token
  endpoint is polled at the issuer's ``interval``, 5 s slower after each
  ``slow_down``, until the user signs in, denies, or the code expires;
* browser: authorization code with PKCE S256 (RFC 7636), redirected to a
  listener on 127.0.0.1:0 (RFC 8252); ``state`` must come back unchanged.

The account lands in :class:`client.token_cache.TokenCache`; :func:`cached_token`
serves it to ``arcctl get-token`` and refreshes it silently.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import sys
import time
import webbrowser
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from client.auth import HTTP_TIMEOUT, ssl_context_for
from client.config import AuthConfig
from client.errors import AuthError, ConfigError
from client.oidc_discovery import Endpoints, discover
from client.token_cache import Account, TokenCache, account_from_token

__all__ = ["NotLoggedIn", "cached_token", "login", "refresh"]

log = logging.getLogger("client")

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5.0  # RFC 8628 3.5
DEFAULT_INTERVAL = 5.0
# How long the browser flow waits for the redirect before giving up.
BROWSER_TIMEOUT = 300.0
DEFAULT_CLIENT_ID = "arc-cli"


class NotLoggedIn(AuthError):
    """An interactive sign-in is needed and there is no terminal to do it."""


def _issuer(auth: AuthConfig) -> str:
    if not auth.issuer:
        raise ConfigError("client config has no auth.issuer: add the OIDC issuer URL "
                          "(arcctl login needs it; see docs/config.md)")
    return auth.issuer


def _client_id(auth: AuthConfig) -> str:
    return auth.client_id or DEFAULT_CLIENT_ID


def _extra(auth: AuthConfig) -> dict[str, str]:
    # audience/resource: what some providers need to issue a JWT for our API;
    # lifetime: a sandbox issuer extension (short-lived tokens for tests).
    return {**auth.token_parameters(), **({"lifetime": str(auth.lifetime)} if auth.lifetime else {})}


async def _post(url: str, form: dict[str, str], auth: AuthConfig) -> tuple[int, dict[str, Any]]:
    ctx = ssl_context_for(auth.ca_file, "identity provider")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as s:
            async with s.post(url, data=form, ssl=ctx) as resp:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
                return resp.status, body if isinstance(body, dict) else {}
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        raise AuthError(f"cannot reach the identity provider at {url} ({type(err).__name__}): "
                        "is it running?") from None


def _refused(what: str, body: dict[str, Any], status: int) -> AuthError:
    code = body.get("error") or f"HTTP {status}"
    return AuthError(f"the identity provider refused the {what} ({code}): run `arcctl login` again")


async def login(auth: AuthConfig, cache: TokenCache | None = None, *, method: str | None = None) -> Account:
    """Sign in interactively (``method`` or ``auth.login``) and cache the account."""
    endpoints = await discover(_issuer(auth), auth.ca_file)
    how = method or auth.login
    if how == "browser":
        body = await _browser_flow(auth, endpoints)
    else:
        body = await _device_flow(auth, endpoints)
    account = account_from_token(endpoints.issuer, _client_id(auth), body)
    (cache or TokenCache()).put(account)
    log.info("signed in to %s as %s", endpoints.issuer, account.username or account.account)
    return account


async def _device_flow(auth: AuthConfig, endpoints: Endpoints) -> dict[str, Any]:
    if not endpoints.device_authorization_endpoint:
        raise AuthError(f"issuer {endpoints.issuer} offers no device code sign-in: "
                        "set auth.login: browser in the client config")
    client_id = _client_id(auth)
    status, start = await _post(endpoints.device_authorization_endpoint, {
        "client_id": client_id, "scope": " ".join(auth.login_scopes()), **_extra(auth)}, auth)
    if status != 200 or not isinstance(start.get("device_code"), str):
        raise _refused("device code request", start, status)
    uri = start.get("verification_uri_complete") or start.get("verification_uri")
    print(f"To sign in, open {uri} and enter the code {start.get('user_code')}", file=sys.stderr, flush=True)
    interval = float(start.get("interval") or DEFAULT_INTERVAL)
    deadline = time.monotonic() + float(start.get("expires_in") or 900)
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": start["device_code"], "client_id": client_id,
            **auth.token_parameters()}
    while True:
        await asyncio.sleep(interval)
        status, body = await _post(endpoints.token_endpoint, form, auth)
        error = body.get("error")
        if status == 200 and "access_token" in body:
            return body
        if error == "authorization_pending":
            pass
        elif error == "slow_down":
            interval += SLOW_DOWN_STEP
        elif error == "access_denied":
            raise AuthError("sign-in was denied at the identity provider: run `arcctl login` again to retry")
        elif error == "expired_token":
            raise AuthError("the sign-in code expired before it was used: run `arcctl login` again")
        else:
            raise _refused("device code sign-in", body, status)
        if time.monotonic() > deadline:
            raise AuthError("the sign-in code expired before it was used: run `arcctl login` again")


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def _browser_flow(auth: AuthConfig, endpoints: Endpoints) -> dict[str, Any]:
    if not endpoints.authorization_endpoint:
        raise AuthError(f"issuer {endpoints.issuer} offers no browser sign-in: "
                        "set auth.login: devicecode in the client config")
    client_id = _client_id(auth)
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(24)
    done: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        query = dict(request.query)
        if query.get("state") != state:
            return web.Response(status=400, text="Sign-in response with a wrong state: ignored.")
        if not done.done():
            done.set_result(query)
        if "code" not in query:
            return web.Response(status=400, text="Sign-in failed. You may close this page.")
        return web.Response(text="Signed in. You may close this page and return to the terminal.")

    app = web.Application()
    app.router.add_get("/", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        redirect_uri = f"http://127.0.0.1:{port}/"
        query = {"client_id": client_id, "response_type": "code", "redirect_uri": redirect_uri,
                 "scope": " ".join(auth.login_scopes()), "state": state,
                 "code_challenge": challenge, "code_challenge_method": "S256", **_extra(auth)}
        url = f"{endpoints.authorization_endpoint}?{urlencode(query)}"
        print(f"To sign in, open {url}", file=sys.stderr, flush=True)
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass  # no browser here: the printed URL is the way
        try:
            answer = await asyncio.wait_for(done, BROWSER_TIMEOUT)
        except TimeoutError:
            raise AuthError(f"no sign-in within {BROWSER_TIMEOUT:.0f} s: run `arcctl login` again, "
                            "or use auth.login: devicecode") from None
    finally:
        await runner.cleanup()
    if "code" not in answer:
        raise AuthError(f"the identity provider refused the sign-in ({answer.get('error', 'no code')}): "
                        "run `arcctl login` again")
    status, body = await _post(endpoints.token_endpoint, {
        "grant_type": "authorization_code", "code": answer["code"], "redirect_uri": redirect_uri,
        "client_id": client_id, "code_verifier": verifier, **auth.token_parameters()}, auth)
    if status != 200 or "access_token" not in body:
        raise _refused("authorization code", body, status)
    return body


async def refresh(auth: AuthConfig, account: Account, cache: TokenCache) -> Account | None:
    """Renew ``account`` with its refresh token; None when the issuer refuses it."""
    if not account.refresh_token:
        return None
    endpoints = await discover(account.issuer, auth.ca_file)
    form = {"grant_type": "refresh_token", "refresh_token": account.refresh_token,
            "client_id": account.client_id, "scope": " ".join(auth.login_scopes()), **_extra(auth)}
    status, body = await _post(endpoints.token_endpoint, form, auth)
    if status == 400 and body.get("error") == "invalid_scope":
        # A provider that granted fewer scopes than the login asked for (it
        # drops ones it does not know, e.g. Entra's ".default") refuses them on
        # refresh; without ``scope`` it renews what it granted (RFC 6749 §6).
        del form["scope"]
        status, body = await _post(endpoints.token_endpoint, form, auth)
    if status != 200 or "access_token" not in body:
        log.info("token refresh refused by %s (%s)", account.issuer, body.get("error") or status)
        return None
    renewed = account_from_token(account.issuer, account.client_id, body)
    if not renewed.refresh_token:
        renewed.refresh_token = account.refresh_token  # issuers may not rotate it
    cache.put(renewed)
    return renewed


async def cached_token(auth: AuthConfig, cache: TokenCache, *, interactive: bool) -> Account:
    """The cached account for ``auth.issuer``: as it is while fresh, else
    refreshed, else a new interactive sign-in when ``interactive``.

    Raises:
        NotLoggedIn: a sign-in is needed and ``interactive`` is false.
    """
    issuer = _issuer(auth)
    account = cache.current(issuer, _client_id(auth))
    if account is not None:
        if account.fresh():
            return account
        renewed = await refresh(auth, account, cache)
        if renewed is not None:
            return renewed
    if not interactive:
        who = f" as {account.username or account.account}" if account else ""
        raise NotLoggedIn(f"not logged in to {issuer}{who}: run `arcctl login`")
    return await login(auth, cache)
