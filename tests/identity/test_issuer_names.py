"""A principal belongs to its issuer (issue 17 item 6): the per-issuer name
prefixes in force, by the rule of identity/issuer_names.py, and the agent
config that applies it to kube-aad-proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfigError, agent_config_from_dict
from certs import CertificateAuthority, generate_key_pair, write_pem_pair
from identity.issuer_names import IssuerNaming, Prefixes, resolve_prefixes

A, B = "https://a.example/tenant/v2.0", "https://b.example/"


def test_one_issuer_has_no_prefix_unless_configured() -> None:
    """A single-issuer setup keeps its bare names (and its RBAC)."""
    assert resolve_prefixes([IssuerNaming(A)]) == {A: Prefixes("", "")}
    assert resolve_prefixes([IssuerNaming(A, "a")]) == {A: Prefixes("", "")}
    assert resolve_prefixes([IssuerNaming(A, None, "oidc:", "g:")]) == {A: Prefixes("oidc:", "g:")}


def test_several_issuers_are_prefixed_by_default() -> None:
    """``<alias>:`` where an alias is set, else ``<issuer>#`` (the API server's form)."""
    assert resolve_prefixes([IssuerNaming(A, "corp"), IssuerNaming(B)]) == {
        A: Prefixes("corp:", "corp:"), B: Prefixes(f"{B}#", f"{B}#")}


@pytest.mark.parametrize(("items", "message"), [
    ([IssuerNaming(A, None, ""), IssuerNaming(B)], "username_prefix of issuer https://a.example/tenant/v2.0 "
     "is empty while 2 issuers are trusted"),
    ([IssuerNaming(A, None, None, "x:"), IssuerNaming(B, None, None, "x:y")],
     "groups_prefix 'x:' of issuer https://a.example/tenant/v2.0 begins issuer https://b.example/'s 'x:y'"),
    ([IssuerNaming(A, "same"), IssuerNaming(B, "same")], "alias 'same' names two issuers"),
    ([IssuerNaming(A, "system")], "alias 'system' of issuer"),
    ([IssuerNaming(A, "a b")], "alias 'a b' of issuer"),
])
def test_prefixes_that_could_collide_are_refused(items: list[IssuerNaming], message: str) -> None:
    """Empty, shared or nested prefixes among several issuers would let one
    issuer mint another's names: refused in one line."""
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve_prefixes(items)


def _agent(tmp: Path, issuers: list[dict[str, Any]]) -> dict[str, Any]:
    ca = CertificateAuthority.create("issuer names CA")
    cert, key = write_pem_pair(tmp, "serving", ca.issue_server(["kube-aad-proxy.local"]))
    (tmp / "ca.crt").write_bytes(ca.certificate_pem)
    (tmp / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    return {"relay": {"url": "https://127.0.0.1:1"}, "cluster": {"resource_group": "rg", "name": "c"},
            "agent_key_file": str(tmp / "agent.key"),
            "kube_aad_proxy": {"serving_cert_file": str(cert), "serving_key_file": str(key),
                               "upstream_url": "https://127.0.0.1:2", "upstream_ca_file": str(tmp / "ca.crt"),
                               "oidc": {"issuers": issuers}}}


def test_agent_config_prefixes_each_issuer_among_several(tmp_path: Path) -> None:
    """The agent's kube-aad-proxy issuers get the rule's prefixes; a
    colliding configuration stops arc-agent with one line."""
    one = agent_config_from_dict(_agent(tmp_path, [{"issuer": A}]))
    assert [(i.username_prefix, i.groups_prefix) for i in one.kube_aad_proxy.issuers] == [("", "")]
    two = agent_config_from_dict(_agent(tmp_path, [{"issuer": A, "alias": "corp"},
                                                   {"issuer": B, "groups_prefix": "b-group:"}]))
    assert [(i.username_prefix, i.groups_prefix) for i in two.kube_aad_proxy.issuers] == [
        ("corp:", "corp:"), (f"{B}#", "b-group:")]
    with pytest.raises(AgentConfigError) as info:
        agent_config_from_dict(_agent(tmp_path, [{"issuer": A, "username_prefix": ""}, {"issuer": B}]))
    assert str(info.value).startswith("agent config: kube_aad_proxy.oidc.issuers: username_prefix of issuer "
                                      f"{A} is empty while 2 issuers are trusted")
