"""The relay's tunnel limits: the adapter's defaults, overridable from the config file."""

from __future__ import annotations

import pytest

from relay.app import _tunnel_config
from relay.config import ConfigError, relay_config_from_dict
from tunnel.aio import ADAPTER_SEND_PAYLOAD, ADAPTER_STREAM_WINDOW
from tunnel.limits import INITIAL_STREAM_WINDOW


def test_relay_grants_the_adapters_stream_window_and_frame_size_by_default() -> None:
    limits = _tunnel_config(relay_config_from_dict({})).limits
    assert limits.stream_window == ADAPTER_STREAM_WINDOW > INITIAL_STREAM_WINDOW
    assert limits.max_send_payload == ADAPTER_SEND_PAYLOAD


def test_relay_config_file_overrides_one_limit_and_keeps_the_others() -> None:
    config = relay_config_from_dict({"limits": {"tunnel": {"limits": {"stream_window": 2 << 20}}}})
    limits = _tunnel_config(config).limits
    assert limits.stream_window == 2 << 20
    assert limits.max_send_payload == ADAPTER_SEND_PAYLOAD


def test_relay_config_refuses_a_window_below_the_protocols() -> None:
    config = relay_config_from_dict({"limits": {"tunnel": {"limits": {"stream_window": 1000}}}})
    with pytest.raises(ConfigError, match=r"limits\.tunnel: stream_window must be in"):
        _tunnel_config(config)
