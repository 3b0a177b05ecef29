"""``arcctl connect --oidc-issuer`` given several times (issue 17 item 7):
every issuer, with its own audience, CA, alias and prefixes, lands in the
agent's kube-aad-proxy config, which the agent's own loader reads back with
each issuer's names prefixed (docs/identity-providers.md)."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import agent_config_from_dict
from certs import CertificateAuthority, generate_key_pair
from client.arcctl import build_parser
from client.arcctl_connect import base_values
from client.config import ClientConfig
from client.errors import ConfigError
from client.manifests import SA_DIR, SECRET_DIR, build_manifests, dump_manifests
from tests.support.processes import child_env

CORP = "https://login.example.com/00000000-0000-0000-0000-000000000000/v2.0"
PARTNER = "https://idp.partner.example/"


def _agent_config_from_manifests(tmp: Path, args: list[str]) -> dict[str, object]:
    """Run connect's value building on ``args``, then materialise the Secret
    and ConfigMap as the pod would see them and return the config document."""
    parsed = build_parser().parse_args(["connect", "-n", "edge", *args])
    client = ClientConfig(relay_url="https://relay.example.com")
    values = base_values(parsed, client, "lab", {})
    ca = CertificateAuthority.create("connect issuers CA")
    serving = ca.issue_server(["kube-aad-proxy.local"])
    values = dataclasses.replace(values, agent_key=generate_key_pair("x").private_key_pem.decode(),
                                 serving_cert=serving.chain_pem.decode(),
                                 serving_key=serving.private_key_pem.decode())
    docs = {d["kind"]: d for d in yaml.safe_load_all(dump_manifests(build_manifests(values)))}
    secret, sa = tmp / "secret", tmp / "sa"
    secret.mkdir()
    sa.mkdir()
    for key, b64 in docs["Secret"]["data"].items():
        (secret / key).write_bytes(base64.b64decode(b64))
    (sa / "ca.crt").write_bytes(ca.certificate_pem)
    (sa / "token").write_text("sa-token")
    text = docs["ConfigMap"]["data"]["agent.yaml"].replace(SECRET_DIR, str(secret)).replace(SA_DIR, str(sa))
    doc: dict[str, object] = yaml.safe_load(text)
    return doc


def test_connect_puts_every_issuer_in_the_agent_config(tmp_path: Path) -> None:
    corp_ca = CertificateAuthority.create("corp idp").certificate_pem
    partner_ca = CertificateAuthority.create("partner idp").certificate_pem
    (tmp_path / "corp.crt").write_bytes(corp_ca)
    (tmp_path / "partner.crt").write_bytes(partner_ca)
    doc = _agent_config_from_manifests(tmp_path, [
        "--oidc-issuer", f"{CORP},alias=corp,ca_file={tmp_path / 'corp.crt'}",
        "--oidc-issuer", f"{PARTNER},audience=api://partner,ca_file={tmp_path / 'partner.crt'},"
                         "groups_prefix=partner-group:",
        "--oidc-audience", "api://cluster-connect"])
    loaded = agent_config_from_dict(doc).kube_aad_proxy.issuers
    assert [(i.issuer, i.audiences, i.ca_pem, i.username_prefix, i.groups_prefix) for i in loaded] == [
        (CORP, ("api://cluster-connect",), corp_ca, "corp:", "corp:"),
        (PARTNER, ("api://partner",), partner_ca, f"{PARTNER}#", "partner-group:")]


def test_connect_with_one_issuer_keeps_bare_names(tmp_path: Path) -> None:
    """One issuer: the config is what it was (no prefixes), so existing RBAC holds."""
    doc = _agent_config_from_manifests(tmp_path, ["--oidc-issuer", CORP, "--oidc-audience", "api://x"])
    (issuer,) = agent_config_from_dict(doc).kube_aad_proxy.issuers
    assert (issuer.issuer, issuer.audiences, issuer.username_prefix, issuer.groups_prefix) == (
        CORP, ("api://x",), "", "")


@pytest.mark.parametrize(("spec", "needle"), [
    ("http://idp.example/", "expected the issuer's https:// URL"),
    (f"{CORP},tenant=x", "'tenant=x' is not key=value with a key of audience, ca_file"),
    (f"{CORP},alias=a,alias=b", "alias is given twice"),
])
def test_connect_refuses_a_bad_issuer_spec_in_one_line(spec: str, needle: str) -> None:
    parsed = build_parser().parse_args(["connect", "-n", "edge", "--oidc-issuer", spec])
    with pytest.raises(ConfigError) as info:
        base_values(parsed, ClientConfig(relay_url="https://relay.example.com"), "lab", {})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_connect_for_helm_refuses_what_the_chart_cannot_hold(tmp_path: Path) -> None:
    """The chart trusts one issuer: --helm-values with two is one line, exit 2,
    nothing written (the second issuer is not silently dropped)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": "https://relay.example.com"},
                                      "auth": {"token_endpoint": "https://login.example.com/token"}}))
    p = subprocess.run(
        [sys.executable, "-m", "client.arcctl", "connect", "-n", "edge", "--helm-values", str(tmp_path / "v.yaml"),
         "--oidc-issuer", CORP, "--oidc-issuer", PARTNER, "--oidc-audience", "api://x", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=child_env())
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "the chart trusts one issuer" in p.stderr and not (tmp_path / "v.yaml").exists()


def test_connect_gives_the_agent_the_clusters_audience_not_the_relays() -> None:
    """With auth.relay_scope the token arcctl connect holds is the relay's (its aud
    is the relay's own): the agent trusts scope's audience, never the relay's."""
    from client.config import AuthConfig

    parsed = build_parser().parse_args(["connect", "-n", "edge"])
    claims = {"iss": "https://idp.example.com/t/v2.0", "aud": "api://cluster-connect-relay"}
    split = ClientConfig(relay_url="https://relay.example.com", auth=AuthConfig(
        scope="api://cluster-connect/.default", relay_scope="api://cluster-connect-relay/.default"))
    assert base_values(parsed, split, "lab", claims).oidc_audience == "api://cluster-connect"
    old = ClientConfig(relay_url="https://relay.example.com")  # one audience for both, as before
    assert base_values(parsed, old, "lab", {**claims, "aud": "api://x"}).oidc_audience == "api://x"
