"""Tokens bound to one cluster (docs/pop.md) on the whole path, with the demo
as it ships (kube_aad_proxy.pop.required on, the relay's own audience):
kubectl through arc-proxy gets
signed requests from ``arcctl get-token --pop``; what a compromised cluster
captures opens nothing elsewhere, the relay included (a cluster's audience is
not the relay's, and the relay's is refused by clusters). Each refusal is proven at the sandbox API
server's own audit trail: nothing reached it."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from client.pop import PopKey, sign_shr
from demo import DemoEnvironment
from demo.identity import AUDIENCE, RELAY_AUDIENCE
from tests.e2e.identity_support import (
    Forge,
    audit,
    audit_since,
    cluster_of,
    demo,
    raw_request,
    relay_status,
    whoami_head,
)
from tests.support.e2e import Proxy, start_proxy

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OTHER_CLUSTER = "other.default.kube-aad-proxy.cluster-connect.local"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnvironment]:
    """The demo with proof-of-possession required and the relay's own audience, as `arcctl demo` runs it."""
    with demo(tmp_path_factory.mktemp("pop"), require_pop=True, relay_audience=True) as e:
        yield e


@pytest.fixture(scope="module")
def proxy(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The demo user's arc-proxy (exec-plugin kubeconfig)."""
    p = start_proxy(env.client_config_path, tmp_path_factory.mktemp("kube-pop") / "config", "-v")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def captured(proxy: Proxy) -> str:
    """What the cluster sees from kubectl: the SHR the kubeconfig's exec plugin prints."""
    doc = yaml.safe_load(proxy.kubeconfig.read_text())
    spec = doc["users"][0]["user"]["exec"]
    assert "--pop" in spec["args"]
    assert spec["args"][spec["args"].index("--pop-target") + 1] == cluster_of(proxy.kubeconfig)["tls-server-name"]
    out = subprocess.run([spec["command"], *spec["args"]], capture_output=True, check=True, timeout=60)
    return str(json.loads(out.stdout)["status"]["token"])


def _refused(env: DemoEnvironment, proxy: Proxy, token: str, needle: str) -> None:
    mark = len(audit(env))
    resp = raw_request(proxy.kubeconfig, whoami_head(token))
    assert resp.status == 401, (resp.status, resp.body[:300])
    assert needle in str(resp.json().get("message", ""))
    reached = audit_since(env, mark)
    assert reached == [], f"requests reached the API server: {reached}"


def test_pop_kubectl_whoami_through_signed_request(env: DemoEnvironment, proxy: Proxy, captured: str) -> None:
    """The captured SHR itself works at its own cluster: the API server sees the demo user."""
    mark = len(audit(env))
    resp = raw_request(proxy.kubeconfig, whoami_head(captured))
    assert resp.status == 201, (resp.status, resp.body[:300])
    assert resp.json()["status"]["userInfo"]["username"] == env.identity.user_oid
    assert audit_since(env, mark)


def test_pop_captured_at_is_refused_bare_at_cluster_and_relay(env: DemoEnvironment, proxy: Proxy,
                                                              captured: str) -> None:
    """The access token taken out of the SHR: refused bare by the cluster (PoP required)
    and by the relay's management and client endpoints (bound to a key); the SHR itself
    is no token for the relay either."""
    at = jwt.decode(captured, options={"verify_signature": False})["at"]
    _refused(env, proxy, at, "proof-of-possession")
    for token in (at, captured):
        assert relay_status(env, "/api/v1/clusters", token) == 401
        assert relay_status(env, "/client/v1/connect", token) == 401


def test_pop_replayed_from_another_cluster_is_refused(env: DemoEnvironment, proxy: Proxy) -> None:
    """An SHR that cluster A saw (u names A) replayed to this cluster: 401, nothing reached it."""
    forge = Forge(env)
    key = PopKey(ec.generate_private_key(ec.SECP256R1()))
    shr = sign_shr(key, forge.token("demo", cnf={"kid": key.key_id}), OTHER_CLUSTER)
    _refused(env, proxy, shr, "for another cluster")


def test_pop_expired_ts_and_swapped_at_are_refused(env: DemoEnvironment, proxy: Proxy, captured: str) -> None:
    """An SHR past its ts window, and another user's bound at under my signature: 401, nothing reached."""
    forge = Forge(env)
    key = PopKey(ec.generate_private_key(ec.SECP256R1()))
    target = cluster_of(proxy.kubeconfig)["tls-server-name"]
    mine = forge.token("demo", cnf={"kid": key.key_id})
    _refused(env, proxy, sign_shr(key, mine, target, ts=int(time.time()) - 400), "expired")
    theirs = jwt.decode(captured, options={"verify_signature": False})["at"]  # bound to the demo user's key
    _refused(env, proxy, sign_shr(key, theirs, target), "bound to another key")


def _relay_refusal(env: DemoEnvironment, path: str, token: str) -> tuple[int, str]:
    """Status and message of ``GET path`` at the relay with ``token``."""
    ctx = ssl.create_default_context(cafile=str(env.dir / "relay" / "ca.crt"))
    req = urllib.request.Request(env.relay_url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
            return int(resp.status), ""
    except urllib.error.HTTPError as err:
        return int(err.code), str(json.loads(err.read() or b"{}").get("error", {}).get("message", ""))


def test_cluster_token_is_refused_at_the_relay(env: DemoEnvironment) -> None:
    """What any cluster sees (a token for the clusters' audience, here the admin's,
    not even bound to a key) opens neither the relay's management API nor its client
    endpoint, with one line naming the fix; the same admin's relay token does."""
    forge = Forge(env)
    cluster_token = forge.token("admin")
    assert jwt.decode(cluster_token, options={"verify_signature": False})["aud"] == AUDIENCE
    for path in ("/api/v1/clusters", "/client/v1/connect"):
        status, message = _relay_refusal(env, path, cluster_token)
        assert status == 401, (path, status)
        assert "wrong audience" in message and "auth.relay_scope" in message and "\n" not in message, message
    assert relay_status(env, "/api/v1/clusters", forge.token("admin", aud=RELAY_AUDIENCE)) == 200


def test_relay_token_is_refused_at_the_cluster(env: DemoEnvironment, proxy: Proxy) -> None:
    """A token for the relay's audience, even bound to the key that signs the
    request for this very cluster, is refused by kube-aad-proxy: nothing reached the API server."""
    forge = Forge(env)
    key = PopKey(ec.generate_private_key(ec.SECP256R1()))
    target = cluster_of(proxy.kubeconfig)["tls-server-name"]
    relay_token = forge.token("demo", aud=RELAY_AUDIENCE, cnf={"kid": key.key_id})
    _refused(env, proxy, sign_shr(key, relay_token, target), "audience")


def test_arcctl_uses_the_relay_token_and_kubectl_the_cluster_token(env: DemoEnvironment, captured: str) -> None:
    """The demo's client config asks for both: the relay's for arcctl's calls
    (arcctl list works), the clusters' inside kubectl's signed request."""
    at = jwt.decode(captured, options={"verify_signature": False})["at"]
    assert jwt.decode(at, options={"verify_signature": False})["aud"] == AUDIENCE
    out = subprocess.run([sys.executable, "-m", "client.arcctl_entry", "list", "--config",
                          str(env.client_config_path)], capture_output=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr.decode()
