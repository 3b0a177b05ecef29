"""The agent assertion replay cache: expiry ordered, bounded, never forgets a live jti."""

from __future__ import annotations

import pytest

from certs import generate_key_pair
from identity import TokenInvalid, sign_agent_assertion
from identity.agent_assertion import AgentAssertionVerifier, ReplayCache

AUD = "https://relay.test/agent/v1/connect"


def test_replay_cache_drops_exactly_the_expired_entries_in_expiry_order() -> None:
    """Entries added out of expiry order leave exactly when they expire."""
    cache = ReplayCache(max_entries=10)
    for i, forget_at in enumerate([50.0, 10.0, 30.0, 20.0, 40.0]):
        cache.add(("rg/a", f"jti-{i}"), forget_at, now=0.0)
    cache.forget_expired(25.0)
    assert len(cache) == 3
    with pytest.raises(TokenInvalid, match="replayed"):
        cache.add(("rg/a", "jti-2"), 99.0, now=25.0)  # forget_at 30: still live
    cache.add(("rg/a", "jti-1"), 99.0, now=25.0)  # forget_at 10: gone, may be reused
    cache.forget_expired(100.0)
    assert len(cache) == 0


def test_replay_cache_refuses_when_full_of_live_entries() -> None:
    """At the bound a new assertion is refused (a live jti is never evicted
    early, which would allow its replay); expired ones make room."""
    cache = ReplayCache(max_entries=3)
    for i in range(3):
        cache.add(("rg/a", f"jti-{i}"), 10.0 + i, now=0.0)
    with pytest.raises(TokenInvalid, match="full"):
        cache.add(("rg/a", "jti-3"), 20.0, now=5.0)
    assert len(cache) == 3
    cache.add(("rg/a", "jti-3"), 20.0, now=10.5)  # jti-0 expired at 10
    assert len(cache) == 3


def test_verifier_refuses_a_replayed_assertion_and_bounds_its_cache() -> None:
    """The same signed assertion twice: the second is refused; the verifier's
    cache holds at most ``max_replay_entries``."""
    keys = generate_key_pair("rg/a")
    verifier = AgentAssertionVerifier(AUD, max_replay_entries=2)
    token = sign_agent_assertion(keys.private_key_pem, "rg/a", AUD)
    assert verifier.verify(token, keys.certificate_pem) == "rg/a"
    with pytest.raises(TokenInvalid, match="replayed"):
        verifier.verify(token, keys.certificate_pem)
    verifier.verify(sign_agent_assertion(keys.private_key_pem, "rg/a", AUD), keys.certificate_pem)
    with pytest.raises(TokenInvalid, match="full"):
        verifier.verify(sign_agent_assertion(keys.private_key_pem, "rg/a", AUD), keys.certificate_pem)
    assert len(verifier.replay_cache) == 2
