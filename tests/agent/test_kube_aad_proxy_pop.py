"""kube-aad-proxy and proof-of-possession tokens (docs/pop.md): real
identity.TokenValidator, real SandboxIdp tokens bound with ``cnf``, a
recording TLS upstream standing in for the API server. Every refusal is a
401 and the upstream records nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent import KubeAadProxy, KubeAadProxyConfig
from client.pop import PopKey, sign_shr
from identity import TokenValidator, TrustedIssuer
from sandbox.idp import DEFAULT_AUDIENCE, SandboxIdp
from tests.support.kube_aad_proxy import RecordingUpstream, connect, get, read_response, status_of
from tests.support.pki import PROXY_NAME, Pki

pytestmark = pytest.mark.timeout(60)

AGENT_TOKEN = "agent-sa-token"
DEMO_OID = "35233192-fc5d-4d88-83c8-36ab5ca99ad9"


async def start_proxy(pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, *,
                      require_pop: bool) -> tuple[KubeAadProxy, TokenValidator]:
    validator = TokenValidator([TrustedIssuer(issuer=idp.issuer, audiences=[DEFAULT_AUDIENCE], ca_pem=idp.ca_pem)])
    proxy = KubeAadProxy(KubeAadProxyConfig(
        upstream_url=upstream.url, upstream_ca_pem=pki.ca.certificate_pem, serving_cert=pki.proxy_cert,
        upstream_token=AGENT_TOKEN, validator=validator, require_pop=require_pop,
    ))
    await proxy.start()
    return proxy, validator


@pytest.fixture
async def pop_proxy(pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp) -> AsyncIterator[KubeAadProxy]:
    proxy, validator = await start_proxy(pki, upstream, idp, require_pop=True)
    yield proxy
    await proxy.stop()
    await validator.close()


@pytest.fixture
def key() -> PopKey:
    return PopKey(ec.generate_private_key(ec.SECP256R1()))


async def request(pki: Pki, proxy: KubeAadProxy, token: str) -> tuple[int, str]:
    r, w = await connect(pki, proxy.port)
    w.write(get("/api/v1/namespaces/default/pods", f"Authorization: Bearer {token}"))
    resp = await read_response(r)
    w.close()
    return resp.status, (str(status_of(resp)["message"]) if resp.status >= 400 else "")


async def test_pop_proxy_accepts_signed_request_for_its_own_name(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, pop_proxy: KubeAadProxy, key: PopKey
) -> None:
    """An SHR naming this cluster's serving name, carrying an at bound to the signing key,
    goes on as the agent's token plus impersonation of the at's oid; the SHR and at stay here;
    its signature is checked once, not per request."""
    at = idp.mint("demo", cnf={"kid": key.key_id})
    shr = sign_shr(key, at, PROXY_NAME)
    for _ in range(3):  # then from the SHR cache and the validator's cache
        assert (await request(pki, pop_proxy, shr))[0] == 200
    assert pop_proxy.policy.pop.verifications == 1
    got = upstream.received[-1]
    assert got.values("authorization") == [f"Bearer {AGENT_TOKEN}"]
    assert got.values("impersonate-user") == [DEMO_OID]
    assert at.encode() not in got.raw_head and shr.encode() not in got.raw_head


@pytest.mark.parametrize(("case", "reason"), [
    ("replayed to another cluster", "for another cluster"),
    ("ts expired", "proof-of-possession token expired"),
    ("swapped at", "bound to another key"),
    ("unbound at", "not bound to a key"),
    ("bare bearer", "requires proof-of-possession"),
    ("bare bound at", "requires proof-of-possession"),
])
async def test_pop_proxy_refuses_attack(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, pop_proxy: KubeAadProxy, key: PopKey,
    case: str, reason: str,
) -> None:
    """Replayed to cluster B (u names A), after ts expiry, another user's bound at inside my
    signature, an unbound at, a bare bearer token, the bound at without its SHR: 401 with
    the reason, and nothing reaches the API server."""
    mine = idp.mint("demo", cnf={"kid": key.key_id})
    if case == "replayed to another cluster":
        token = sign_shr(key, mine, "cluster-a.default.kube-aad-proxy.cluster-connect.local")
    elif case == "ts expired":
        token = sign_shr(key, mine, PROXY_NAME, ts=int(time.time()) - 300 - 60 - 5)
    elif case == "swapped at":
        theirs = PopKey(ec.generate_private_key(ec.SECP256R1()))
        token = sign_shr(key, idp.mint("admin", cnf={"kid": theirs.key_id}), PROXY_NAME)
    elif case == "unbound at":
        token = sign_shr(key, idp.mint("demo"), PROXY_NAME)
    elif case == "bare bearer":
        token = idp.mint("demo")
    else:
        token = mine
    status, message = await request(pki, pop_proxy, token)
    assert status == 401 and reason in message
    assert upstream.received == []


async def test_pop_proxy_without_require_pop_accepts_bearer_but_not_bare_bound(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, key: PopKey
) -> None:
    """With require_pop off a bare bearer token still works; a bound token sent bare does
    not (whoever holds it without the key is not its owner); service-account tokens pass."""
    proxy, validator = await start_proxy(pki, upstream, idp, require_pop=False)
    try:
        assert (await request(pki, proxy, idp.mint("demo")))[0] == 200
        status, message = await request(pki, proxy, idp.mint("demo", cnf={"kid": key.key_id}))
        assert status == 401 and "bound to a key" in message
        assert (await request(pki, proxy, sign_shr(key, idp.mint("demo", cnf={"kid": key.key_id}),
                                                   PROXY_NAME)))[0] == 200
        assert len(upstream.received) == 2
    finally:
        await proxy.stop()
        await validator.close()


async def test_pop_proxy_refuses_signed_request_from_untrusted_issuer(
    pki: Pki, upstream: RecordingUpstream, pop_proxy: KubeAadProxy, key: PopKey
) -> None:
    """An SHR around a token of no trusted issuer is refused, never passed through."""
    import jwt

    at = jwt.encode({"iss": "https://evil.example", "aud": DEFAULT_AUDIENCE, "exp": time.time() + 60,
                     "oid": DEMO_OID, "cnf": {"kid": key.key_id}},
                    ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "k"})
    status, message = await request(pki, pop_proxy, sign_shr(key, at, PROXY_NAME))
    assert status == 401 and "untrusted issuer" in message
    assert upstream.received == []


async def test_pop_proxy_refuses_cached_signed_request_once_stale(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, key: PopKey
) -> None:
    """An SHR accepted (and cached) is refused once its ts leaves the window: the cache
    never outlives max_age; nothing more reaches the API server."""
    proxy, validator = await start_proxy(pki, upstream, idp, require_pop=True)
    try:
        now = [time.time()]
        proxy.policy.pop.clock = lambda: now[0]
        shr = sign_shr(key, idp.mint("demo", cnf={"kid": key.key_id}), PROXY_NAME)
        assert (await request(pki, proxy, shr))[0] == 200
        now[0] += 300 + 60 + 1
        status, message = await request(pki, proxy, shr)
        assert status == 401 and "expired" in message
        assert len(upstream.received) == 1
    finally:
        await proxy.stop()
        await validator.close()
