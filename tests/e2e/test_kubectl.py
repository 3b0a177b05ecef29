"""Real kubectl (1.27: SPDY; 1.33: websocket) through arc-proxy → relay →
agent → kube-aad-proxy → sandbox API server, each a separate process; each
test with both kubeconfig shapes (proxy-url, the default: kubectl CONNECTs
through arc-proxy; direct: server is arc-proxy's port)."""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo import DemoEnvironment
from tests.support.e2e import Kubectl, Proxy, stop
from tests.support.kubectl import require_kubectl
from tests.support.servers import threaded_tcp_server

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

VERSIONS = ["1.27", "1.33"]
MODES = ["direct", "proxy-url"]
NS = "e2e"
PF_DOWN = 100 * 1024 * 1024   # bytes the port-forward target sends (byte-exact, sha256)
PF_UP = 8 * 1024 * 1024       # bytes sent to it


@pytest.fixture(params=[(v, m) for v in VERSIONS for m in MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def kubectl(request: pytest.FixtureRequest, proxy: Proxy) -> Kubectl:
    version, mode = request.param
    via = proxy if mode == "proxy-url" else request.getfixturevalue("direct_proxy")
    return Kubectl(require_kubectl(version), via.kubeconfig)


@pytest.fixture(scope="module")
def namespace(proxy: Proxy) -> str:
    k = Kubectl(require_kubectl("1.33"), proxy.kubeconfig)
    k.run("create", "namespace", NS)
    k.run("run", "shell", "-n", NS, "--image", "busybox:1.36", "--restart", "Never")
    k.run("create", "configmap", "watch-sentinel", "-n", NS)
    return NS


def test_kubectl_get_lists_demo_pods(kubectl: Kubectl) -> None:
    """`kubectl get pods -A` shows the pods the demo seeded."""
    out = kubectl.text("get", "pods", "-A")
    assert "web-7d9f8b6c5-abcde" in out and "coredns" in out


def test_kubectl_watch_receives_live_event(kubectl: Kubectl, namespace: str) -> None:
    """`get -w`: an object created after the watch started arrives while it runs."""
    name = f"live-{uuid.uuid4().hex[:8]}"
    p, out, _err = kubectl.popen("get", "configmaps", "-n", namespace, "-w")
    try:
        # The initial list has arrived (so the watch is next); only then create.
        out.wait_for("watch-sentinel", 20)
        kubectl.run("create", "configmap", name, "-n", namespace, "--from-literal=a=b")
        out.wait_for(name, 20)
    finally:
        stop(p)


def test_kubectl_apply_creates_then_unchanged(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    """`apply -f` creates, and a second apply reports unchanged."""
    name = f"applied-{uuid.uuid4().hex[:8]}"
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
                        f"  namespace: {namespace}\ndata:\n  k: v\n")
    assert "created" in kubectl.text("apply", "-f", str(manifest))
    assert "unchanged" in kubectl.text("apply", "-f", str(manifest))


def test_kubectl_exec_passes_stdin_and_exit_code(kubectl: Kubectl, namespace: str) -> None:
    """`exec -i` carries stdin to the process and its exit code back."""
    r = kubectl.run("exec", "-i", "-n", namespace, "shell", "--", "cat", input=b"hello through the tunnel\n")
    assert r.stdout == b"hello through the tunnel\n"
    r = kubectl.run("exec", "-n", namespace, "shell", "--", "sh", "-c", "exit 3", check=False)
    assert r.returncode == 3, r.stderr


def test_kubectl_logs_follow_streams_new_lines(kubectl: Kubectl, namespace: str) -> None:
    """`logs -f` shows a line written after it started."""
    before, marker = f"before-{uuid.uuid4().hex}", f"live-{uuid.uuid4().hex}"
    kubectl.run("exec", "-n", namespace, "shell", "--", "sh", "-c", f"echo {before} > /proc/1/fd/1")
    p, out, _err = kubectl.popen("logs", "-f", "-n", namespace, "shell")
    try:
        out.wait_for(before, 20)  # following now: what comes next must arrive live
        kubectl.run("exec", "-n", namespace, "shell", "--", "sh", "-c", f"echo {marker} > /proc/1/fd/1")
        out.wait_for(marker, 20)
    finally:
        stop(p)


def test_kubectl_cp_roundtrips_a_file(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    """`cp` to the pod and back gives the same bytes."""
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 400)
    kubectl.run("cp", str(src), f"{namespace}/shell:/tmp/copied.bin")
    back = tmp_path / "back.bin"
    kubectl.run("cp", f"{namespace}/shell:/tmp/copied.bin", str(back))
    assert back.read_bytes() == src.read_bytes()


def _pattern(n: int) -> bytes:
    block = hashlib.sha256(b"arc-e2e").digest() * 2048  # 64 KiB, not compressible by accident
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture(scope="module")
def pf_target() -> Iterator[int]:
    """A loopback TCP target: reads an 8-byte length and that many bytes, answers
    their sha256, then sends PF_DOWN pattern bytes and closes."""
    down = _pattern(PF_DOWN)

    def serve(conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rb")
            n = int.from_bytes(f.read(8), "big")
            h = hashlib.sha256()
            left = n
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    return
                h.update(chunk)
                left -= len(chunk)
            conn.sendall(h.digest())
            conn.sendall(down)

    with threaded_tcp_server(serve) as port:
        yield port


def test_kubectl_port_forward_moves_100mb_byte_exact(kubectl: Kubectl, namespace: str,
                                                     pf_target: int, demo_env: DemoEnvironment) -> None:
    """`port-forward` to a pod's declared loopback target: 8 MB up and 100 MB down, sha256 equal."""
    pod = f"pf-{uuid.uuid4().hex[:8]}"
    # The pod is set-up, not the subject: create it directly so this test does
    # not depend on `apply` (tested above).
    demo_env.sandbox_admin().create(f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": namespace, "annotations": {
            "portforward.sandbox.cluster-connect.dev/8080": f"127.0.0.1:{pf_target}"}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1",
                                 "ports": [{"containerPort": 8080}]}]},
    })
    p, out, _err = kubectl.popen("port-forward", "-n", namespace, f"pod/{pod}", ":8080")
    try:
        line = out.wait_for("Forwarding from 127.0.0.1:", 30)
        local = int(line.split("127.0.0.1:")[1].split()[0])
        up = _pattern(PF_UP)[::-1]
        with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
            s.sendall(len(up).to_bytes(8, "big"))
            s.sendall(up)
            f = s.makefile("rb")
            assert f.read(32) == hashlib.sha256(up).digest()
            h, got = hashlib.sha256(), 0
            while got < PF_DOWN:
                chunk = f.read(min(1 << 20, PF_DOWN - got))
                if not chunk:
                    break
                h.update(chunk)
                got += len(chunk)
        assert got == PF_DOWN
        assert h.digest() == hashlib.sha256(_pattern(PF_DOWN)).digest()
    finally:
        stop(p)


def test_kubectl_relay_never_sees_plaintext(kubectl: Kubectl, namespace: str,
                                            demo_env: DemoEnvironment) -> None:
    """A marker sent in a request body reaches the API server but never appears
    in the DATA bytes the relay forwarded (TLS is end to end)."""
    record = demo_env.dir.parent / "relay-data.bin"
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    name = f"secret-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "configmap", name, "-n", namespace, f"--from-literal=k={marker}")
    assert marker in kubectl.text("get", "configmap", name, "-n", namespace, "-o", "yaml")
    data = record.read_bytes()
    assert len(data) > 10_000, "the relay recorded no DATA: is the recording hook on?"
    assert marker.encode() not in data


def test_kubectl_identity_is_the_oidc_user_via_exec_plugin(proxy: Proxy, demo_env: DemoEnvironment) -> None:
    """Without --token the kubeconfig runs `arcctl get-token`; kube-aad-proxy
    validates the OIDC token and impersonates the user's oid and groups."""
    k = Kubectl(require_kubectl("1.33"), proxy.kubeconfig)
    who = k.text("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert who == demo_env.identity.user_oid
