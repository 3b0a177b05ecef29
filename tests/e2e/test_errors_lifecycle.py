"""Errors that name the real cause, in the lifecycle environment (sandbox API
server, IdP, relay; alice has the onboarding role on resource group ``lab``):

- connect without the onboarding role names that role and its scopes;
- ``role list``/``role export`` without admin say so and exit 5 (not ``[]``);
- connect waits until the agent is Connected, and a wait that runs out says
  where to look and exits 7, keeping the registration and the objects;
- show without a role names viewer, delete names onboarding, and a viewer's
  refused delete removes nothing in the cluster.

The tests of this module run in order and share one environment.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from client.errors import ClusterNotFound
from tests.support.lifecycle import GROUP, LifecycleEnv, running_lifecycle_env
from tests.support.processes import ROOT, child_env

pytestmark = pytest.mark.timeout(120)

NAME = "wait-1"
BOB_OID = "7a338408-e16c-4e47-9de2-1202ff0e1eaa"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleEnv]:
    """Sandbox API server, IdP and relay, no cluster registered."""
    with running_lifecycle_env(tmp_path_factory.mktemp("errors-lifecycle")) as e:
        yield e


def _one_line(p: subprocess.CompletedProcess[str], prog: str, code: int) -> str:
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith(f"{prog}: ")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def _bob(env: LifecycleEnv) -> Path:
    path = env.base / "bob-config.yaml"
    cfg = yaml.safe_load(env.alice_config.read_text())
    cfg["auth"].update(username="bob@contoso.example", password="bob-password")
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_connect_without_onboarding_names_the_role_and_scope(env: LifecycleEnv) -> None:
    """bob has no role: connect says it needs onboarding at the cluster's or the
    group's scope, with the command an admin runs; exit 5; nothing registered."""
    p = env.arcctl("connect", "-n", "no-role", "-g", GROUP, "--kube-config", env.kubeconfig, config=_bob(env))
    line = _one_line(p, "arcctl connect", 5)
    assert (f"needs the onboarding role at scope /resourceGroups/{GROUP}/clusters/no-role or "
            f"/resourceGroups/{GROUP}") in line
    assert f"arcctl role assign --role onboarding --assignee {BOB_OID} -g {GROUP}" in line
    assert "does not exist" not in line and "cluster-user" not in line
    with pytest.raises(ClusterNotFound):
        env.registration("no-role")


@pytest.mark.parametrize("verb", [("list",), ("list", "-g", GROUP), ("export", "-o", "yaml")])
def test_role_list_and_export_without_admin_say_so(env: LifecycleEnv, verb: tuple[str, ...]) -> None:
    """alice (onboarding only) lists/exports role assignments: Forbidden (exit 5),
    naming the admin role and the scope, and nothing on stdout."""
    p = env.arcctl("role", *verb)
    line = _one_line(p, f"arcctl role {verb[0]}", 5)
    where = f"at scope /resourceGroups/{GROUP}" if "-g" in verb else "at some scope"
    assert f"needs the admin role {where}" in line
    assert p.stdout == ""


def test_connect_wait_that_runs_out_names_the_causes_and_keeps_everything(env: LifecycleEnv) -> None:
    """No agent runs: connect deploys, waits --wait-timeout, then exits 7 naming
    image pull, network to the relay and proxy, and the logs command; the
    registration and the objects stay."""
    p = env.arcctl("connect", "-n", NAME, "-g", GROUP, "--kube-config", env.kubeconfig, "--wait-timeout", "2")
    line = _one_line(p, "arcctl connect", 7)
    assert f"the agent of {GROUP}/{NAME} did not connect within 2 s (status Connecting)" in line
    for cause in ("image cannot be pulled", f"cannot reach the relay at {env.demo.relay_url}", "proxy",
                  "kubectl -n arc-system logs deploy/arc-agent"):
        assert cause in line
    assert f"Waiting up to 2 s for the agent of {GROUP}/{NAME}" in p.stdout
    assert env.status(NAME) == "Connecting"
    files, _ = env.read_agent_objects()
    assert files["agent.key"]


def test_connect_waits_until_the_agent_is_connected(env: LifecycleEnv) -> None:
    """connect again (nothing changes) and start the agent once connect says it
    waits: connect ends with exit 0 once the relay reports Connected."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "ARC_CONFIG": str(env.alice_config),
                "XDG_CACHE_HOME": str(env.base / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "client.arcctl", "connect", "-n", NAME, "-g", GROUP,
                             "--kube-config", env.kubeconfig, "--wait-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=full_env)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # ends at the waiting line, or at EOF if connect failed first
            seen.append(line)
            if line.startswith("Waiting up to 60 s"):
                break
        assert seen and seen[-1].startswith("Waiting up to 60 s"), "".join(seen) + proc.stderr.read()
        assert env.status(NAME) != "Connected"
        env.start_agent(NAME)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"Agent of {GROUP}/{NAME} is Connected" in out
    assert env.status(NAME) == "Connected"


def test_show_and_delete_without_a_role_name_the_role_each_needs(env: LifecycleEnv) -> None:
    """bob has no role: show names the viewer role, delete the onboarding role,
    each at the cluster's scope; exit 5, one line, nothing deleted."""
    scope = f"/resourceGroups/{GROUP}/clusters/{NAME}"
    show = _one_line(env.arcctl("show", "-n", NAME, "-g", GROUP, config=_bob(env)), "arcctl show", 5)
    assert f"arcctl show needs the viewer role at scope {scope}" in show
    assert "cluster-user" not in show
    delete = _one_line(env.arcctl("delete", "-n", NAME, "-g", GROUP, "-y", "--kube-config", env.kubeconfig,
                                  config=_bob(env)), "arcctl delete", 5)
    assert f"arcctl delete needs the onboarding role at scope {scope}" in delete
    assert "cluster-user" not in delete
    assert env.registration(NAME)


def test_delete_by_a_viewer_is_refused_before_it_touches_the_cluster(env: LifecycleEnv) -> None:
    """bob gets viewer on the cluster (he may read the registration, not delete
    it): delete exits 5 naming onboarding, and the agent's objects in the
    cluster and the registration are all still there."""
    asyncio.run(env.admin_call(lambda api: api.put_role_assignment("bob-viewer", {
        "principalId": BOB_OID, "principalType": "User", "role": "viewer",
        "scope": f"/resourceGroups/{GROUP}/clusters/{NAME}"})))
    assert env.arcctl("show", "-n", NAME, "-g", GROUP, config=_bob(env)).returncode == 0
    p = env.arcctl("delete", "-n", NAME, "-g", GROUP, "-y", "--kube-config", env.kubeconfig, config=_bob(env))
    # What must not happen first, then the message.
    assert "[1/2]" not in p.stdout, p.stdout
    files, _ = env.read_agent_objects()
    assert files["agent.key"]
    assert env.status(NAME) == "Connected"
    line = _one_line(p, "arcctl delete", 5)
    assert "needs the onboarding role" in line


def test_arc_proxy_for_a_viewer_names_the_cluster_user_role(env: LifecycleEnv) -> None:
    """bob, now a viewer of the cluster, runs arc-proxy: the relay refuses his
    stream, and arc-proxy says it needs cluster-user on that cluster; exit 5."""
    full_env = child_env(ARC_CONFIG=str(_bob(env)), XDG_CACHE_HOME=str(env.base / "cache"))
    p = subprocess.run([sys.executable, "-m", "client.proxy_cli", "-n", NAME, "-g", GROUP, "--port", "0",
                        "-f", str(env.base / "bob-kubeconfig")], capture_output=True, text=True,
                       env=full_env, timeout=60, stdin=subprocess.DEVNULL)
    line = _one_line(p, "arc-proxy", 5)
    assert f"arc-proxy needs the cluster-user role on cluster {GROUP}/{NAME}" in line
