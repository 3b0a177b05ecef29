"""The relay's listener keys (``listener.*``, edge ``limits.*``): parsed,
defaulted, and refused in one line when wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay.config import ConfigError, relay_config_from_dict
from relay.edge_limits import EdgeLimits


def test_relay_config_reads_listener_and_edge_limits() -> None:
    """Every edge key lands in RelayConfig.edge; absent keys keep the defaults."""
    config = relay_config_from_dict({
        "listener": {"tls_engine": "asyncio"},
        "limits": {"tls_handshake_timeout_seconds": 3, "head_timeout_seconds": 4, "max_head_bytes": 8192,
                   "max_preauth_connections": 7, "keepalive_timeout_seconds": 9, "listen_backlog": 11},
    })
    assert config.edge == EdgeLimits(tls_engine="asyncio", tls_handshake_timeout=3.0, head_timeout=4.0,
                                     max_head_bytes=8192, max_preauth_connections=7, keepalive_timeout=9.0,
                                     listen_backlog=11)
    assert relay_config_from_dict({}).edge == EdgeLimits()


def test_listener_transport_is_read_else_taken_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """listener.transport wins; unset, $ARC_TUNNEL_TRANSPORT decides; else aiohttp."""
    monkeypatch.delenv("ARC_TUNNEL_TRANSPORT", raising=False)
    assert relay_config_from_dict({}).edge.transport == "aiohttp"
    assert relay_config_from_dict({"listener": {"transport": "native"}}).edge.transport == "native"
    monkeypatch.setenv("ARC_TUNNEL_TRANSPORT", "native")
    assert relay_config_from_dict({}).edge.transport == "native"
    assert relay_config_from_dict({"listener": {"transport": "aiohttp"}}).edge.transport == "aiohttp"


@pytest.mark.parametrize(("data", "message"), [
    ({"listener": {"tls_engine": "openssl"}},
     "listener.tls_engine: expected 'memorybio' or 'asyncio', got 'openssl'"),
    ({"listener": {"transport": "websockets"}},
     "listener.transport: expected 'aiohttp' or 'native', got 'websockets'"),
    ({"limits": {"head_timeout_seconds": 0}}, "limits.head_timeout_seconds: expected a number > 0, got 0"),
    ({"limits": {"max_preauth_connections": 0}},
     "limits.max_preauth_connections: expected a whole number >= 1, got 0"),
    ({"limits": {"listen_backlog": 0}}, "limits.listen_backlog: expected a whole number >= 1, got 0"),
    ({"limits": {"max_head_bytes": "lots"}}, "limits.max_head_bytes: expected a whole number, got 'lots'"),
    ({"listener": "memorybio"}, "listener: expected a mapping, got 'memorybio'"),
])
def test_relay_config_refuses_bad_edge_values(data: dict[str, object], message: str) -> None:
    """A bad edge value is a one-line ConfigError naming the key, what it takes and what it got."""
    with pytest.raises(ConfigError) as info:
        relay_config_from_dict(data)
    assert str(info.value) == f"relay config: {message}"


def test_relay_cli_reports_bad_tls_engine_in_one_line(tmp_path: Path) -> None:
    """arc-relay with an unknown tls_engine: one line, exit 2, no traceback."""
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"listener": {"tls_engine": "boringssl"}}))
    result = subprocess.run([sys.executable, "-m", "relay.cli", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"arc-relay: {config}: listener.tls_engine: expected 'memorybio' or "
                                    "'asyncio', got 'boringssl'")
    assert result.stderr.strip().count("\n") == 0
