"""Clock skew and JWKS refresh are config keys of both daemons (issue 17
item 7): ``oidc.clock_skew_seconds`` / ``jwks_refresh_seconds`` /
``jwks_min_refresh_seconds`` at the relay and under ``kube_aad_proxy.oidc``
at the agent, applied to the real validator (a sandbox-issued token expired
five seconds ago passes the default 60 s skew and not a skew of 0)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import _token_validator
from agent.config import AgentConfigError, agent_config_from_dict
from certs import CertificateAuthority, generate_key_pair, write_pem_pair
from identity import TokenInvalid
from relay.config import ConfigError, relay_config_from_dict
from sandbox.idp import SandboxIdp
from tests.support.relay import running_env


def _agent(tmp: Path, idp: SandboxIdp, oidc: dict[str, Any]) -> dict[str, Any]:
    ca = CertificateAuthority.create("validator keys CA")
    cert, key = write_pem_pair(tmp, "serving", ca.issue_server(["kube-aad-proxy.local"]))
    (tmp / "ca.crt").write_bytes(ca.certificate_pem)
    (tmp / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    return {"relay": {"url": "https://127.0.0.1:1"}, "cluster": {"resource_group": "rg", "name": "c"},
            "agent_key_file": str(tmp / "agent.key"),
            "kube_aad_proxy": {"serving_cert_file": str(cert), "serving_key_file": str(key),
                               "upstream_url": "https://127.0.0.1:2", "upstream_ca_file": str(tmp / "ca.crt"),
                               "oidc": {"issuers": [{"issuer": idp.issuer, "ca_file": idp.ca_file}], **oidc}}}


async def test_agent_clock_skew_key_reaches_the_validator(tmp_path: Path) -> None:
    async with SandboxIdp(tmp_path / "idp") as idp:
        late = idp.mint("demo", exp=int(time.time()) - 5)
        for oidc, accepted in (({}, True), ({"clock_skew_seconds": 0, "jwks_refresh_seconds": 120,
                                             "jwks_min_refresh_seconds": 1}, False)):
            config = agent_config_from_dict(_agent(tmp_path, idp, oidc))
            validator = _token_validator(config)
            assert validator is not None
            try:
                if accepted:
                    assert (await validator.validate(late)).issuer == idp.issuer
                else:
                    with pytest.raises(TokenInvalid, match="token expired"):
                        await validator.validate(late)
            finally:
                await validator.close()
        assert config.kube_aad_proxy.validator_options == {
            "clock_skew": 0, "jwks_max_age": 120, "jwks_min_refresh_interval": 1}
        with pytest.raises(AgentConfigError, match=r"kube_aad_proxy\.oidc\.clock_skew_seconds"):
            agent_config_from_dict(_agent(tmp_path, idp, {"clock_skew_seconds": 3600}))


async def test_relay_clock_skew_key_reaches_the_validator(tmp_path: Path) -> None:
    assert relay_config_from_dict({"oidc": {"jwks_refresh_seconds": 300}}).validator_options == {
        "clock_skew": 60.0, "jwks_max_age": 300, "jwks_min_refresh_interval": 30.0}
    with pytest.raises(ConfigError, match=r"oidc\.jwks_refresh_seconds"):
        relay_config_from_dict({"oidc": {"jwks_refresh_seconds": 0}})
    for skew, status in ((60.0, 200), (0.0, 401)):
        options = {**relay_config_from_dict({}).validator_options, "clock_skew": skew}
        async with running_env(tmp_path / str(status), validator_options=options) as env:
            late = env.token("admin", exp=int(time.time()) - 5)
            assert (await env.api("GET", "/api/v1/clusters", late))[0] == status
