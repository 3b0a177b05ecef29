"""The relay's metrics: served on the health listener only, every name documented,
per-cluster series bounded, the sample alert rules naming real metrics."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.connector import Connector, ConnectorConfig
from agent.health import agent_health_listener
from agent.kube_aad_proxy import KubeAadProxy, KubeAadProxyConfig
from certs import CertificateAuthority, generate_key_pair
from identity import TokenValidator, TrustedIssuer
from relay.config import ConfigError, relay_config_from_dict
from relay.metrics import OTHER_CLUSTERS
from tests.support.relay import RelayEnv, running_env
from tests.support.servers import server_port, start_echo_server

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "metrics.md"
RULES = ROOT / "deploy" / "alerts" / "cluster-connect.rules.yaml"


async def scrape(env: RelayEnv) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the relay's /metrics on its health listener, over HTTP."""
    async with aiohttp.ClientSession() as http, http.get(env.relay.health_url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def exposed_names(registries: Iterable[CollectorRegistry]) -> set[str]:
    """Metric names as exposed: counters with their ``_total``."""
    return {family.name + ("_total" if family.type == "counter" else "")
            for registry in registries for family in registry.collect()}


def documented_names() -> set[str]:
    """The names in the tables of docs/metrics.md."""
    return set(re.findall(r"^\| `(arc_[a-z_]+)` \|", DOCS.read_text(), re.M))


def agent_registry(env: RelayEnv, tmp_path: Path) -> CollectorRegistry:
    """The registry of an arc-agent running kube-aad-proxy with an OIDC validator
    (not started: collectors read their objects' state, no socket needed)."""
    ca = CertificateAuthority.create("test CA")
    serving = ca.issue_server(("localhost",), ("127.0.0.1",), common_name="kube-aad-proxy")
    validator = TokenValidator([TrustedIssuer(env.idp.issuer, ["api://cluster-connect"],
                                              ca_pem=Path(env.idp.ca_file).read_bytes())])
    proxy = KubeAadProxy(KubeAadProxyConfig(upstream_url="https://127.0.0.1:9", upstream_ca_pem=ca.certificate_pem,
                                            serving_cert=serving, upstream_token="t", validator=validator))
    keys = generate_key_pair("rg/a")
    connector = Connector(ConnectorConfig(relay_url=env.relay.url, cluster_id="rg/a",
                                          private_key_pem=keys.private_key_pem, upstream=("127.0.0.1", 9)))
    return agent_health_listener(connector, proxy).registry


async def test_relay_serves_metrics_on_its_health_listener_not_the_public_port(relay_env: RelayEnv) -> None:
    """/metrics answers on the health listener (plain HTTP, loopback) and 404 on the
    public TLS port, which keeps /healthz and /readyz for load balancers."""
    assert relay_env.relay.health_url.startswith("http://127.0.0.1:")
    async with relay_env.http.get(relay_env.relay.url + "/metrics") as resp:
        assert resp.status == 404
    for path in ("/healthz", "/readyz"):
        async with relay_env.http.get(relay_env.relay.url + path) as resp:
            assert resp.status == 200, path
    async with aiohttp.ClientSession() as http:
        for path in ("/livez", "/readyz"):
            async with http.get(relay_env.relay.health_url + path) as resp:
                assert (resp.status, await resp.text()) == (200, "ok\n"), path
        async with http.get(relay_env.relay.health_url + "/readyz?verbose") as resp:
            assert await resp.text() == "[+]accepting ok\n[+]database ok\nok\n"
    samples = await scrape(relay_env)
    assert value(samples, "arc_relay_edge_preauth_connections") == 0
    assert value(samples, "arc_relay_token_signature_verifications_total") == 0
    assert value(samples, "arc_relay_oidc_signing_keys", issuer=relay_env.idp.issuer) == 0
    assert value(samples, "arc_relay_health_connections_refused_total") == 0


async def test_relay_readyz_fails_while_draining(relay_env: RelayEnv) -> None:
    """A draining relay fails readiness on both ports, naming the check."""
    relay_env.state.accepting = False
    try:
        async with aiohttp.ClientSession() as http, http.get(relay_env.relay.health_url + "/readyz") as resp:
            assert (resp.status, await resp.text()) == (503, "[-]accepting failed: shutting down\n")
        async with relay_env.http.get(relay_env.relay.url + "/readyz") as resp:
            assert (resp.status, await resp.text()) == (503, "shutting down\n")
    finally:
        relay_env.state.accepting = True


async def test_every_exposed_metric_is_documented_and_every_documented_one_exposed(
        relay_env: RelayEnv, tmp_path: Path) -> None:
    """docs/metrics.md lists exactly the names the relay, the agent and kube-aad-proxy
    expose, and all follow the naming scheme."""
    exposed = exposed_names([relay_env.state.metrics.registry, agent_registry(relay_env, tmp_path)])
    documented = documented_names()
    assert exposed - documented == set(), "exposed but not in docs/metrics.md"
    assert documented - exposed == set(), "in docs/metrics.md but not exposed"
    scheme = re.compile(r"^arc_(relay|agent|kube_aad_proxy)_[a-z_]+$")
    assert all(scheme.match(name) for name in exposed)


async def test_sample_alert_rules_parse_and_name_existing_metrics(relay_env: RelayEnv, tmp_path: Path) -> None:
    """Every rule of deploy/alerts has an alert name and an expression, and every
    arc_* metric an expression names is one the daemons expose."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    exposed = exposed_names([relay_env.state.metrics.registry, agent_registry(relay_env, tmp_path)])
    named = set()
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
        named |= set(re.findall(r"\barc_[a-z_]+", rule["expr"]))
    assert named - exposed == set()
    assert {"arc_relay_cluster_connected", "arc_relay_admission_refused_total"} <= named


async def test_relay_cluster_metrics_follow_agent_sessions_and_streams(relay_env: RelayEnv) -> None:
    """A connected cluster reads 1, a registered one without agent 0; a routed stream
    counts for its cluster while open (a cluster without streams has no stream series)."""
    echo = await start_echo_server()
    await relay_env.register("rg1", "idle")
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("admin"))
    stream = await client.open_stream(b"rg1/alpha")
    samples = await scrape(relay_env)
    assert value(samples, "arc_relay_cluster_connected", cluster="rg1/alpha") == 1
    assert value(samples, "arc_relay_cluster_connected", cluster="rg1/idle") == 0
    assert value(samples, "arc_relay_clusters_registered") == 2
    assert value(samples, "arc_relay_clusters_connected") == 1
    assert value(samples, "arc_relay_clusters_unlisted") == 0
    assert value(samples, "arc_relay_cluster_streams_open", cluster="rg1/alpha") == 1
    assert value(samples, "arc_relay_cluster_streams_open", cluster=OTHER_CLUSTERS) == 0
    assert value(samples, "arc_relay_cluster_streams_open", cluster="rg1/idle") is None  # no streams: no series
    await stream.aclose()
    echo.close()


async def test_relay_caps_cluster_series_offline_first_with_an_other_bucket(tmp_path: Path) -> None:
    """With health.max_cluster_series=1 and three clusters, only the offline one
    keeps a series; the connected cluster's stream is summed under _other."""
    async with running_env(tmp_path, max_cluster_series=1) as env:
        echo = await start_echo_server()
        for name in ("a", "b", "c"):
            keys = await env.register("rg1", name)
            if name != "b":
                await env.start_agent(f"rg1/{name}", keys, ("127.0.0.1", server_port(echo)))
                await env.wait_agent(f"rg1/{name}")
        client = await env.client(env.token("admin"))
        stream = await client.open_stream(b"rg1/a")
        samples = await scrape(env)
        series = {labels for (name, labels) in samples if name == "arc_relay_cluster_connected"}
        assert series == {(("cluster", "rg1/b"),)}
        assert value(samples, "arc_relay_cluster_connected", cluster="rg1/b") == 0
        assert value(samples, "arc_relay_cluster_streams_open", cluster=OTHER_CLUSTERS) == 1
        assert value(samples, "arc_relay_clusters_unlisted") == 2
        assert value(samples, "arc_relay_clusters_connected") == 2
        await stream.aclose()
        echo.close()


def test_relay_config_reads_health_keys() -> None:
    """health.* keys reach RelayConfig; a bad one is one line naming the key."""
    config = relay_config_from_dict({"health": {"listen": "[::1]:9090", "max_connections": 4,
                                                "connection_seconds": 2, "max_cluster_series": 10}})
    assert (config.health_host, config.health_port, config.max_cluster_series) == ("::1", 9090, 10)
    assert (config.health_limits.max_connections, config.health_limits.connection_seconds) == (4, 2.0)
    defaults = relay_config_from_dict({})
    assert (defaults.health_host, defaults.health_port, defaults.max_cluster_series) == ("127.0.0.1", 0, 1000)
    for bad, message in (({"listen": "9090"}, "health.listen: expected host:port such as"),
                         ({"max_connections": 0}, "health.max_connections: expected a whole number >= 1"),
                         ({"max_cluster_series": -1}, "health.max_cluster_series: expected a whole number >= 0"),
                         ("x", "health: expected a mapping")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            relay_config_from_dict({"health": bad})
