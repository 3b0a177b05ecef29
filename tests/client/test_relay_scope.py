"""``auth.relay_scope`` (issue 17 item 3): the client asks the real sandbox
issuer for two tokens, the relay's (its own audience, which no cluster ever
sees) for arcctl's management calls and arc-proxy's relay session, and the
cluster token for kubectl; without ``relay_scope`` one token serves both (old configs)."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from client.auth import CachedTokenSource, TokenSource
from client.config import AuthConfig
from demo import load_demo_identity
from sandbox.idp import SandboxIdp

CLUSTER = "api://cluster-connect"
RELAY = "api://cluster-connect-relay"


def _auth(idp: SandboxIdp, **kw: object) -> AuthConfig:
    ident = load_demo_identity()
    base: dict[str, object] = {"token_endpoint": idp.token_endpoint, "ca_file": str(idp.ca_file),
                               "client_id": ident.client_id, "scope": f"{CLUSTER}/.default",
                               "username": ident.user, "password": ident.password}
    return AuthConfig(**{**base, **kw})  # type: ignore[arg-type]


def _aud(token: str) -> object:
    return jwt.decode(token, options={"verify_signature": False})["aud"]


async def test_relay_scope_gives_the_relay_its_own_audience(idp: SandboxIdp, tmp_path: Path) -> None:
    """for_relay() asks for relay_scope (a bearer token even with pop on); the
    cluster's token and its cache file stay those of `scope`."""
    auth = _auth(idp, relay_scope=f"{RELAY}/.default", pop=True)
    relay = auth.for_relay()
    assert relay.pop is False and auth.cluster_audience() == CLUSTER
    assert _aud(await TokenSource(relay).get()) == RELAY
    cluster = CachedTokenSource(auth, tmp_path)
    assert _aud((await cluster.get_token()).access_token) == CLUSTER
    assert CachedTokenSource(relay, tmp_path).path != cluster.path


async def test_without_relay_scope_one_token_serves_both(idp: SandboxIdp) -> None:
    """An old config: the relay's token is the cluster's, as before."""
    auth = _auth(idp)
    assert auth.for_relay() is auth and auth.cluster_audience() is None
    assert _aud(await TokenSource(auth.for_relay()).get()) == CLUSTER


@pytest.mark.parametrize("scope", [f"{CLUSTER}/.default", f"openid {CLUSTER}/user_impersonation"])
def test_cluster_audience_is_the_resource_of_scope(scope: str) -> None:
    assert AuthConfig(scope=scope, relay_scope=f"{RELAY}/.default").cluster_audience() == CLUSTER
