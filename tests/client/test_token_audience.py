"""``auth.audience`` / ``auth.resource`` (issue 17 item 7): some providers
(Auth0, Okta; Entra v1 and AD FS with ``resource``) issue a JWT access token
for an API only when the token request names it, and an opaque one otherwise,
which no relay can validate. The built-in grants send the configured
parameter with every request, refreshes included.

The provider here is a loopback HTTP token endpoint that behaves like Auth0
(opaque without ``audience``) and signs with the real sandbox issuer's keys,
so the relay's validator checks what the client obtained."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from client.auth import TokenSource
from client.config import AuthConfig
from identity import TokenValidator, TrustedIssuer
from sandbox.idp import SandboxIdp

API = "https://api.cluster-connect.example"


class AudienceProvider:
    """A token endpoint that issues a JWT for ``audience``/``resource`` and an
    opaque string without; every form it received is kept."""

    def __init__(self, idp: SandboxIdp) -> None:
        self.idp = idp
        self.forms: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.forms.append({k: str(v) for k, v in form.items()})
        aud = form.get("audience") or form.get("resource")
        access = self.idp.mint("demo", audience=str(aud)) if aud else "opaque-ZXhhbXBsZQ"
        return web.json_response({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                                  "refresh_token": "refresh-1"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/oauth/token"


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[AudienceProvider]:
    async with SandboxIdp(tmp_path / "idp") as idp:
        p = AudienceProvider(idp)
        await p.start()
        yield p
        assert p.runner is not None
        await p.runner.cleanup()


@pytest.mark.parametrize("key", ["audience", "resource"])
async def test_token_request_names_the_api_so_the_relay_can_validate(provider: AudienceProvider,
                                                                      key: str) -> None:
    validator = TokenValidator([TrustedIssuer(provider.idp.issuer, [API], ca_pem=provider.idp.ca_pem)])
    try:
        plain = TokenSource(AuthConfig(token_endpoint=provider.url, client_id="cli", username="demo",
                                       password="pw"))
        assert await plain.get() == "opaque-ZXhhbXBsZQ"  # what the relay would refuse
        named = AuthConfig(token_endpoint=provider.url, client_id="cli", username="demo", password="pw",
                           **{key: API})
        source = TokenSource(named)
        principal = await validator.validate(await source.get())
        assert principal.claims["aud"] == API
        assert provider.forms[-1][key] == API and provider.forms[-1]["grant_type"] == "password"
        source.invalidate()
        await source.get()  # no refresh token kept by invalidate: the grant again, still naming the API
        assert provider.forms[-1][key] == API
    finally:
        await validator.close()
