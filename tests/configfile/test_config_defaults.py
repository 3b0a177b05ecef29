"""The schemas' defaults are the runtime objects' defaults: a key left out of a
file means what leaving out the keyword argument means in code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.kube_aad_proxy.config import KubeAadProxyConfig, ProxyLimitsSection
from client.config import AuthConfig, AuthSection
from cmdline.errors import ConfigError
from identity import parse_group_source
from identity.group_source import MAX_SECRET_BYTES
from relay.config import RelayConfig, default_state_dir, relay_config_from_dict


def test_relay_schema_defaults_are_relay_config_defaults() -> None:
    """An empty relay config builds the same RelayConfig as its dataclass defaults."""
    assert relay_config_from_dict({}) == RelayConfig(state_dir=default_state_dir())


def test_kube_aad_proxy_limits_defaults_are_the_proxy_defaults() -> None:
    """kube_aad_proxy.limits left out: KubeAadProxyConfig's own defaults."""
    fields = {f.name: f.default for f in dataclasses.fields(KubeAadProxyConfig)}
    for name, value in ProxyLimitsSection().proxy_kwargs().items():
        assert fields[name] == value, name


def test_client_auth_schema_defaults_are_auth_config_defaults() -> None:
    """An empty auth section is AuthConfig()."""
    assert AuthConfig(**AuthSection().model_dump()) == AuthConfig()


def test_group_source_refuses_an_oversized_secret_file(tmp_path: Path) -> None:
    """A client secret file past MAX_SECRET_BYTES is a wrong path: one line, not read on."""
    (tmp_path / "big.secret").write_text("x" * (MAX_SECRET_BYTES + 1))
    section = {"token_endpoint": "https://idp/token", "client_id": "c", "scope": "s",
               "client_secret_file": "big.secret"}
    with pytest.raises(ConfigError) as info:
        parse_group_source(section, tmp_path)
    assert str(info.value) == (f"config: oidc.group_source.client_secret_file: "
                               f"{str(tmp_path / 'big.secret')!r} is larger than {MAX_SECRET_BYTES} bytes; "
                               "is it the right file?")
