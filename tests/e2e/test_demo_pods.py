"""The demo's pods do what the README promises: ``kubectl port-forward`` to a
demo pod's port 8080 answers, with nothing added by the user, through the
whole path (kubectl -> arc-proxy -> relay -> agent -> kube-aad-proxy -> API server),
and ``kubectl exec`` meets the built-in shell the README describes."""

from __future__ import annotations

import urllib.request

import pytest

from demo import DemoEnvironment
from demo.web import PAGE
from tests.support.e2e import Kubectl, Proxy, stop
from tests.support.kubectl import require_kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]


def test_demo_pod_port_forward_answers_without_user_set_up(demo_env: DemoEnvironment, proxy: Proxy) -> None:
    """``kubectl port-forward -n demo pod/web-... :8080`` then an HTTP GET on the
    local port returns the demo page."""
    k = Kubectl(require_kubectl("1.33"), proxy.kubeconfig)
    p, out, _err = k.popen("port-forward", "-n", "demo", "pod/web-7d9f8b6c5-abcde", ":8080")
    try:
        line = out.wait_for("Forwarding from 127.0.0.1:", 30)
        local = int(line.split("127.0.0.1:")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=30) as resp:
            assert resp.status == 200
            assert resp.read() == PAGE
    finally:
        stop(p)


def test_demo_pods_name_the_web_responder_and_it_answers(demo_env: DemoEnvironment) -> None:
    """Every demo pod's port-forward target is the demo's own responder, which answers."""
    pods = demo_env.sandbox_admin().call("GET", "/api/v1/namespaces/demo/pods")["items"]
    targets = {p["metadata"]["annotations"]["portforward.sandbox.cluster-connect.dev/8080"] for p in pods}
    assert targets == {demo_env.info()["web"]}
    with urllib.request.urlopen(f"http://{targets.pop()}/", timeout=10) as resp:
        assert resp.read() == PAGE


def test_demo_pod_shell_does_what_the_readme_says(demo_env: DemoEnvironment, proxy: Proxy) -> None:
    """``kubectl exec`` into a demo pod runs the sandbox's built-in shell, as the
    README describes it: ``$?`` and ``&&`` work, ``$((2+3))`` is printed as
    it is (no arithmetic expansion), and ``tty`` is not a command (exit 127,
    ``sh: tty: not found``)."""
    k = Kubectl(require_kubectl("1.33"), proxy.kubeconfig)
    pod = ["exec", "-n", "demo", "web-7d9f8b6c5-abcde", "--"]
    r = k.run(*pod, "sh", "-c", "false; echo a$? && echo $((2+3))")
    assert r.stdout.decode().splitlines() == ["a1", "$((2+3))"]
    r = k.run(*pod, "sh", "-c", "tty", check=False)
    assert r.returncode == 127, r.stderr
    assert "sh: tty: not found" in r.stderr.decode()
