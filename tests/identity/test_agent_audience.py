"""The agent assertion's audience: computed in one place (identity), signed by
the agent and accepted by the relay for every spelling of the relay's URL."""

from __future__ import annotations

import pytest

from agent.connector_dial import agent_connect_url
from certs import generate_key_pair
from identity import (
    AgentAssertionVerifier,
    TokenInvalid,
    agent_audience,
    agent_audiences,
    sign_agent_assertion,
)
from relay.config import RelayConfig


@pytest.mark.parametrize("relay_url", [
    "https://relay.example:8443", "wss://relay.example:8443/", "https://relay.example/prefix",
])
def test_relay_accepts_the_audience_the_agent_signs(relay_url: str) -> None:
    """What the agent signs for a relay URL is among what a relay with that
    public_url accepts, and names the endpoint the agent dials."""
    signed = agent_audience(relay_url)
    accepted = RelayConfig(public_url=relay_url.rstrip("/")).agent_audiences()
    assert signed in accepted and accepted == agent_audiences(relay_url)
    assert signed.removeprefix("https://") == agent_connect_url(relay_url).removeprefix("wss://")


def test_assertion_for_another_relay_is_refused() -> None:
    """The audience binds an assertion to one relay: another relay refuses it."""
    key = generate_key_pair("rg/c")
    assertion = sign_agent_assertion(key.private_key_pem, "rg/c", agent_audience("https://a.example"))
    assert AgentAssertionVerifier(agent_audiences("wss://a.example")).verify(
        assertion, key.certificate_pem) == "rg/c"
    with pytest.raises(TokenInvalid, match="audience"):
        AgentAssertionVerifier(agent_audiences("https://b.example")).verify(
            assertion, key.certificate_pem)
