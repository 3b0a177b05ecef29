"""The agent connector against a real relay on loopback: GOAWAY, proxies, backoff."""

from __future__ import annotations

import asyncio

import pytest

from agent.connector_dial import agent_audience, agent_connect_url, resolve_proxy
from agent.connector_metadata import parse_cpu
from tests.support.relay import RelayEnv, roundtrip
from tests.support.servers import server_port, splice, start_echo_server
from tests.support.waits import WAIT, until
from tunnel import Backoff


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on 127.0.0.1 that records what it tunnelled."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{server_port(self.server)}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            line = head.split(b"\r\n", 1)[0].decode()
            self.requests.append(line)
            method, target, _ = line.split(" ", 2)
            host, port = target.rsplit(":", 1)
            if method != "CONNECT" or host not in ("127.0.0.1", "localhost"):
                writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await splice(reader, writer, up_reader, up_writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()


def test_connector_backoff_grows_with_full_jitter_and_caps() -> None:
    """The ceiling starts at 100 ms, doubles, caps at 2 s and resets; each
    delay is drawn over the whole [0, ceiling] (full jitter)."""
    backoff = Backoff(0.1, 2.0)
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        assert 0.0 <= backoff.next_delay() <= ceilings[-1]
    assert ceilings[:5] == [0.1, 0.2, 0.4, 0.8, 1.6] and set(ceilings[5:]) == {2.0}
    at_cap = [backoff.next_delay() for _ in range(2000)]
    assert all(0.0 <= d <= 2.0 for d in at_cap)
    # Full jitter, not [d/2, d]: the draws cover the low end too.
    assert min(at_cap) < 0.2 and max(at_cap) > 1.8
    assert backoff.next_delay(cap=0.5) <= 0.5
    backoff.reset()
    assert backoff.ceiling() == 0.1


def test_connector_resolves_proxy_from_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config wins over HTTPS_PROXY; NO_PROXY exempts hosts, suffixes and CIDRs."""
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,10.0.0.0/8")
    assert resolve_proxy("https://relay.example.com") == "http://env-proxy:3128"
    assert resolve_proxy("https://relay.example.com", https="http://cfg:8080") == "http://cfg:8080"
    assert resolve_proxy("https://a.internal.example") is None
    assert resolve_proxy("https://10.1.2.3:443") is None
    assert resolve_proxy("https://relay.example.com", no_proxy="*") is None
    monkeypatch.delenv("HTTPS_PROXY")
    assert resolve_proxy("https://relay.example.com") is None


def test_connector_builds_urls_and_parses_cpu() -> None:
    """The dial URL is wss, the audience https, for either relay URL spelling."""
    assert agent_connect_url("https://r.example:8443") == "wss://r.example:8443/agent/v1/connect"
    assert agent_audience("wss://r.example:8443/") == "https://r.example:8443/agent/v1/connect"
    assert parse_cpu("4") == 4 and parse_cpu("3500m") == 3.5 and parse_cpu("junk") == 0


async def test_connector_honours_goaway_and_old_streams_drain(relay_env: RelayEnv) -> None:
    """On GOAWAY the agent redials at once; a stream open on the old session keeps working."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    old = await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("admin"))
    stream = await client.open_stream(b"rg1/alpha", timeout=WAIT)
    await stream.write(b"before ")
    await old.goaway()
    new = await relay_env.wait_agent("rg1/alpha", not_this=old)
    assert new is not old and connector.sessions_started == 2
    await stream.write(b"after")
    await stream.write_eof()
    received = b""
    async with asyncio.timeout(WAIT):
        while data := await stream.read():
            received += data
    assert received == b"before after"
    async with asyncio.timeout(WAIT):
        await old.wait_closed()
    assert await roundtrip(client, b"rg1/alpha", b"new") == b"new"
    echo.close()


async def test_connector_dials_through_https_proxy(relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTPS_PROXY set the agent tunnels to the relay via CONNECT."""
    proxy = ConnectProxy()
    await proxy.start()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    assert proxy.requests and proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{relay_env.relay.port} ")
    client = await relay_env.client(relay_env.token("admin"))
    assert await roundtrip(client, b"rg1/alpha", b"via proxy") == b"via proxy"
    echo.close()


async def test_connector_keeps_retrying_when_refused(relay_env: RelayEnv) -> None:
    """An unregistered agent is refused (401) and retries without crashing;
    once registered it connects."""
    from certs import generate_key_pair

    keys = generate_key_pair("rg1/late")
    connector = await relay_env.start_agent("rg1/late", keys, ("127.0.0.1", 9))
    await until(lambda: connector.last_error, "the agent's first dial error")
    assert connector.last_error.startswith("relay refused the agent (401)")
    assert not connector.connected
    await relay_env.register("rg1", "late", keys)
    await relay_env.wait_agent("rg1/late")


async def test_connector_stop_drains_open_streams(relay_env: RelayEnv) -> None:
    """stop() sends GOAWAY but lets an open stream finish before closing."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    agent_session = await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("admin"))
    stream = await client.open_stream(b"rg1/alpha", timeout=WAIT)
    await stream.write(b"one ")
    await connector.stop()
    # The relay holds the agent's GOAWAY: from here on only the drain carries the stream.
    await until(lambda: agent_session.goaway_received, "the agent's GOAWAY at the relay")
    await stream.write(b"two")
    await stream.write_eof()
    received = b""
    async with asyncio.timeout(WAIT):
        while data := await stream.read():
            received += data
    assert received == b"one two"
    echo.close()


async def test_connector_names_untrusted_relay_certificate(relay_env: RelayEnv) -> None:
    """Without the relay's CA the agent says the certificate is not trusted (and retries)."""
    keys = await relay_env.register("rg1", "alpha")
    connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9), relay_ca_pem=None)
    await until(lambda: connector.last_error, "the agent's first dial error")
    assert connector.last_error.startswith("relay TLS certificate not trusted")
    assert not connector.connected


def test_connector_dial_outlasts_the_relays_handshake_bound() -> None:
    """By default an agent waits twice the tunnel handshake timeout for a
    dial, so it never abandons a session the relay (bounded by one handshake
    timeout) is about to finish; an explicit dial_timeout wins, 0 is unbounded."""
    from agent.connector import ConnectorConfig
    from tunnel import TunnelConfig

    base = {"relay_url": "https://relay.test", "cluster_id": "rg/a", "private_key_pem": b"",
            "upstream": ("127.0.0.1", 9)}
    default = ConnectorConfig(**base)  # type: ignore[arg-type]
    assert default.effective_dial_timeout == 2 * default.tunnel.handshake_timeout
    assert default.effective_dial_timeout > TunnelConfig().handshake_timeout
    assert ConnectorConfig(**base, dial_timeout=7.0).effective_dial_timeout == 7.0  # type: ignore[arg-type]
    assert ConnectorConfig(**base, dial_timeout=0.0).effective_dial_timeout is None  # type: ignore[arg-type]
