"""Reserved Kubernetes names, end to end (issue 12 item 7): a genuinely signed
token claiming ``system:masters`` or a ``system:`` user name, sent through
arc-proxy -> relay -> agent -> kube-aad-proxy -> sandbox API server, never
acts as it; the API server's audit trail shows what it saw."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from demo import DemoEnvironment
from tests.e2e.identity_support import (
    Forge,
    audit,
    audit_since,
    demo,
    raw_request,
    whoami_head,
)
from tests.support.e2e import Proxy, start_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnvironment]:
    """One demo for this module."""
    with demo(tmp_path_factory.mktemp("identity-reserved")) as e:
        yield e


@pytest.fixture(scope="module")
def proxy(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The demo user's arc-proxy (a legitimate relay session)."""
    p = start_proxy(env.client_config_path, tmp_path_factory.mktemp("kube-reserved") / "config", "-v")
    yield p
    p.stop()


def test_e2e_token_group_system_masters_is_dropped(env: DemoEnvironment, proxy: Proxy) -> None:
    """demo's token with ``system:masters`` added to its groups: the API server
    sees demo's oid and its real groups, never system:masters."""
    forge = Forge(env)
    token = forge.token("demo", groups=["system:masters", forge.group_id("developers")])
    mark = len(audit(env))
    resp = raw_request(proxy.kubeconfig, whoami_head(token))
    assert resp.status == 201, resp.body[:300]
    info = resp.json()["status"]["userInfo"]
    assert info["username"] == forge.oid("demo")
    assert "system:masters" not in info["groups"] and forge.group_id("developers") in info["groups"]
    assert [r["user"] for r in audit_since(env, mark)] == [forge.oid("demo")]


def test_e2e_token_system_username_is_refused(env: DemoEnvironment, proxy: Proxy) -> None:
    """A token whose ``oid`` (the impersonated claim) is ``system:admin`` is
    refused by kube-aad-proxy with 403; nothing reaches the API server."""
    forge = Forge(env)
    token = forge.token("demo", oid="system:admin")
    mark = len(audit(env))
    resp = raw_request(proxy.kubeconfig, whoami_head(token))
    assert resp.status == 403, resp.body[:300]
    assert "reserved Kubernetes name" in str(resp.json().get("message"))
    assert audit_since(env, mark) == []
