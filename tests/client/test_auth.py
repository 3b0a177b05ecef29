"""Token acquisition against the real sandbox OIDC issuer (HTTPS on loopback):
password, client-credentials and refresh grants, the token cache, and
one-line errors that never contain a secret."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from client.auth import CachedTokenSource, TokenSource
from client.config import AuthConfig
from client.errors import AuthError
from demo import load_demo_identity
from sandbox.idp import SandboxIdp


def _auth(idp: SandboxIdp, **kw: str) -> AuthConfig:
    ident = load_demo_identity()
    base = {"token_endpoint": idp.token_endpoint, "ca_file": str(idp.ca_file),
            "client_id": ident.client_id, "scope": "api://cluster-connect/.default"}
    return AuthConfig(**{**base, **kw})


async def test_token_source_password_grant_gives_user_token(idp: SandboxIdp) -> None:
    """The demo user's password grant yields a token for the cluster-connect audience."""
    ident = load_demo_identity()
    tokens = TokenSource(_auth(idp, username=ident.user, password=ident.password))
    claims = jwt.decode(await tokens.get(), options={"verify_signature": False})
    assert claims["oid"] == ident.user_oid
    assert claims["aud"] == "api://cluster-connect"
    assert await tokens.get() == await tokens.get()  # cached while fresh


async def test_token_source_client_credentials_grant_gives_app_token(idp: SandboxIdp) -> None:
    """A service principal's client-credentials grant yields an app token."""
    auth = _auth(idp, client_id="2788b2a2-9ad3-4af4-8567-a7214ea67c4a", client_secret="ci-secret")
    claims = jwt.decode(await TokenSource(auth).get(), options={"verify_signature": False})
    assert claims.get("idtyp") == "app"


async def test_token_source_wrong_password_is_one_line_without_secret(idp: SandboxIdp) -> None:
    """A refused grant is an AuthError naming the grant, never the password."""
    ident = load_demo_identity()
    tokens = TokenSource(_auth(idp, username=ident.user, password="wrong-SECRET-pw"))
    with pytest.raises(AuthError) as info:
        await tokens.get()
    assert "password grant" in str(info.value)
    assert "wrong-SECRET-pw" not in str(info.value)


async def test_cached_token_source_reuses_token_across_instances(idp: SandboxIdp, tmp_path: Path) -> None:
    """A second process (instance) reads the cached token instead of asking again."""
    ident = load_demo_identity()
    auth = _auth(idp, username=ident.user, password=ident.password)
    first = await CachedTokenSource(auth, tmp_path / "cache").get()
    second = await CachedTokenSource(auth, tmp_path / "cache").get()
    assert first == second
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and (files[0].stat().st_mode & 0o077) == 0


async def test_token_source_refreshes_with_refresh_token(idp: SandboxIdp) -> None:
    """An expired cached token is renewed (refresh grant, or the configured grant)."""
    ident = load_demo_identity()
    tokens = TokenSource(_auth(idp, username=ident.user, password=ident.password))
    first = await tokens.get_token()
    # Make it look expired; the next get() must fetch a new one.
    tokens._token = type(first)(first.access_token, 0.0, first.refresh_token)
    second = await tokens.get_token()
    assert second.access_token and second.expires_at > first.expires_at - 5
