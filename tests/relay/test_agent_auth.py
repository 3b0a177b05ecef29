"""Agent authentication at /agent/v1/connect with real signed assertions."""

from __future__ import annotations

import logging
import time

import aiohttp
import jwt
import pytest

from certs import generate_key_pair, load_private_key
from identity import AgentAssertionVerifier, TokenInvalid, sign_agent_assertion
from identity.agent_assertion import unverified_cluster_id
from tests.support.relay import RelayEnv
from tests.support.waits import until_async
from tunnel import TunnelSession, ws_connect_kwargs


async def _dial(env: RelayEnv, token: str | None) -> tuple[int, str]:
    """Dial the agent endpoint; (101, "") when upgraded, else (status, error message)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = env.relay.url + "/agent/v1/connect"
    try:
        ws = await env.http.ws_connect(url, headers=headers, **ws_connect_kwargs())
    except aiohttp.WSServerHandshakeError as exc:
        async with env.http.get(url, headers=headers) as resp:
            body = await resp.json(content_type=None)
        return exc.status, body["error"]["message"]
    session = TunnelSession(ws, is_client=True, name="test-agent")
    await session.close()
    return 101, ""


def _audience(env: RelayEnv) -> str:
    return env.relay.url + "/agent/v1/connect"


async def test_agent_auth_accepts_good_assertion(relay_env: RelayEnv) -> None:
    """A fresh assertion signed with the registered key is accepted (101)."""
    keys = await relay_env.register("rg1", "alpha")
    token = sign_agent_assertion(keys.private_key_pem, "rg1/alpha", _audience(relay_env))
    assert await _dial(relay_env, token) == (101, "")


async def test_agent_auth_refuses_other_clusters_key(relay_env: RelayEnv) -> None:
    """Cluster A's key claiming cluster B is refused: a cluster name cannot be taken over."""
    keys_a = await relay_env.register("rg1", "alpha")
    await relay_env.register("rg1", "beta")
    token = sign_agent_assertion(keys_a.private_key_pem, "rg1/beta", _audience(relay_env))
    status, message = await _dial(relay_env, token)
    assert status == 401 and message == "agent refused: assertion not accepted"


async def _raw_refusal(env: RelayEnv, token: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers (all but Date) and body of the agent endpoint's answer."""
    async with env.http.get(env.relay.url + "/agent/v1/connect",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        headers = sorted((k, v) for k, v in resp.headers.items() if k.lower() != "date")
        return resp.status, headers, await resp.read()


async def test_agent_auth_refuses_unknown_and_wrong_key_alike(
    relay_env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """An assertion for an unregistered cluster and one signed with the wrong
    key (also of another key type) get byte-identical answers; the log tells
    them apart."""
    caplog.set_level(logging.INFO, logger="relay")
    await relay_env.register("rg1", "alpha")
    await relay_env.register("rg1", "beta", generate_key_pair("rsa", kind="rsa"))
    stranger = generate_key_pair("stranger")
    aud = _audience(relay_env)
    unknown = await _raw_refusal(relay_env, sign_agent_assertion(stranger.private_key_pem, "rg1/ghost", aud))
    wrong_key = await _raw_refusal(relay_env, sign_agent_assertion(stranger.private_key_pem, "rg1/alpha", aud))
    wrong_type = await _raw_refusal(relay_env, sign_agent_assertion(stranger.private_key_pem, "rg1/beta", aud))
    assert unknown[0] == 401
    assert unknown == wrong_key == wrong_type
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("agent refused")]
    assert any("'unknown cluster'" in m and "rg1/ghost" in m for m in reasons)
    assert any("signature does not match" in m and "rg1/alpha" in m for m in reasons)
    assert any("algorithm does not match" in m and "rg1/beta" in m for m in reasons)


async def test_agent_auth_refuses_replayed_jti(relay_env: RelayEnv) -> None:
    """The same assertion presented twice is refused the second time."""
    keys = await relay_env.register("rg1", "alpha")
    token = sign_agent_assertion(keys.private_key_pem, "rg1/alpha", _audience(relay_env))
    assert (await _dial(relay_env, token))[0] == 101
    status, message = await _dial(relay_env, token)
    assert status == 401 and message == "agent refused: assertion not accepted"


async def test_agent_auth_refuses_expired_unknown_and_missing(relay_env: RelayEnv) -> None:
    """Expired, unknown cluster, wrong audience and missing assertions are 401 and counted."""
    keys = await relay_env.register("rg1", "alpha")
    expired = sign_agent_assertion(keys.private_key_pem, "rg1/alpha", _audience(relay_env), lifetime=-300)
    assert (await _dial(relay_env, expired)) == (401, "agent refused: assertion not accepted")
    unknown = sign_agent_assertion(keys.private_key_pem, "rg1/ghost", _audience(relay_env))
    assert (await _dial(relay_env, unknown)) == (401, "agent refused: assertion not accepted")
    wrong_aud = sign_agent_assertion(keys.private_key_pem, "rg1/alpha", "https://elsewhere/agent/v1/connect")
    assert (await _dial(relay_env, wrong_aud))[0] == 401
    assert (await _dial(relay_env, None))[0] == 401
    async with relay_env.http.get(relay_env.relay.health_url + "/metrics") as resp:
        text = await resp.text()
    # The metric label is the public reason too (/metrics must not be an oracle).
    assert 'arc_relay_auth_failures_total{endpoint="agent",reason="assertion not accepted"}' in text
    assert 'reason="missing assertion"' in text and 'reason="unknown cluster"' not in text


async def test_agent_auth_marks_cluster_connected_then_offline(relay_env: RelayEnv) -> None:
    """connectivityStatus follows the agent session; metadata from the control stream is stored."""
    keys = await relay_env.register("rg1", "alpha")
    connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9))
    await relay_env.wait_agent("rg1/alpha")
    registry = relay_env.state.registry
    async def agent_version() -> str | None:
        return (await registry.get("rg1/alpha")).agent_version  # type: ignore[no-any-return]
    await until_async(agent_version, "the agent's version from its control stream")
    cluster = await registry.get("rg1/alpha")
    assert cluster.connectivity_status == "Connected" and cluster.agent_version
    await connector.stop()
    async def offline() -> bool:
        return (await registry.get("rg1/alpha")).connectivity_status == "Offline"  # type: ignore[no-any-return]
    await until_async(offline, "Offline after stop")


def test_assertion_verifier_checks_claims() -> None:
    """Unit checks of the verifier: iss != sub, too long lifetime, RSA keys, garbage."""
    aud = "https://relay.test/agent/v1/connect"
    ec_keys = generate_key_pair("ec")
    rsa_keys = generate_key_pair("rsa", kind="rsa")
    verifier = AgentAssertionVerifier(aud)
    assert verifier.verify(sign_agent_assertion(rsa_keys.private_key_pem, "rg/r", aud),
                           rsa_keys.certificate_pem) == "rg/r"
    key = load_private_key(ec_keys.private_key_pem)
    now = int(time.time())
    base = {"iss": "rg/a", "sub": "rg/a", "aud": aud, "iat": now, "exp": now + 60, "jti": "j" * 16}
    with pytest.raises(TokenInvalid, match="subject"):
        verifier.verify(jwt.encode({**base, "sub": "rg/b"}, key, algorithm="ES256"),  # type: ignore[arg-type]
                        ec_keys.certificate_pem)
    with pytest.raises(TokenInvalid, match="lifetime"):
        verifier.verify(jwt.encode({**base, "exp": now + 3600}, key, algorithm="ES256"),  # type: ignore[arg-type]
                        ec_keys.certificate_pem)
    with pytest.raises(TokenInvalid, match=r"jti|claim"):
        verifier.verify(jwt.encode({k: v for k, v in base.items() if k != "jti"}, key,  # type: ignore[arg-type]
                                   algorithm="ES256"), ec_keys.certificate_pem)
    # An RSA-signed token presented against an EC certificate: algorithm mismatch.
    with pytest.raises(TokenInvalid):
        verifier.verify(sign_agent_assertion(rsa_keys.private_key_pem, "rg/a", aud), ec_keys.certificate_pem)
    with pytest.raises(TokenInvalid):
        unverified_cluster_id("not.a.jwt")
    with pytest.raises(TokenInvalid):
        sign_agent_assertion(b"not a key", "rg/a", aud)


def test_unverified_cluster_id_reads_only_a_well_formed_payload() -> None:
    """The claimed cluster comes from the payload of a three-part token;
    anything else is one 'malformed assertion' refusal; the verifier still
    refuses an unreadable registered certificate."""
    import base64
    import json

    aud = "https://relay.test/agent/v1/connect"
    keys = generate_key_pair("rg/a")
    assert unverified_cluster_id(sign_agent_assertion(keys.private_key_pem, "rg/a", aud)) == "rg/a"

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    for bad in ("a.b", "a.b.c.d", f"x.{b64(b'not json')}.y", f"x.{b64(json.dumps([1]).encode())}.y",
                "x.!!!.y", "x." + "A" * 9000 + ".y"):
        with pytest.raises(TokenInvalid, match="malformed"):
            unverified_cluster_id(bad)
    with pytest.raises(TokenInvalid, match="issuer"):
        unverified_cluster_id(f"x.{b64(json.dumps({'sub': 'rg/a'}).encode())}.y")
    with pytest.raises(TokenInvalid, match="unreadable"):
        AgentAssertionVerifier(aud).verify(sign_agent_assertion(keys.private_key_pem, "rg/a", aud),
                                           b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
