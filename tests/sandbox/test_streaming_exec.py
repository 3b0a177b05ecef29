"""exec over websocket (v5/v4/base64 channel protocols) and SPDY/3.1, with
raw clients and with real kubectl 1.27/1.29/1.30/1.33."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from websockets.frames import Opcode

from tests.sandbox.test_streaming_harness import (
    WAIT,
    Harness,
    SpdyClient,
    WsClient,
    make_pod,
    open_upgrade,
    running_harness,
    ws_headers,
)
from tests.support.kubectl import require_kubectl
from tests.support.sandbox import SessionSpy

pytestmark = pytest.mark.timeout(120)
EXEC = "/api/v1/namespaces/default/pods/p/exec"
SCRIPT = "cat; echo oops >&2; echo $GREETING; exit 7"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path, [make_pod()]) as h:
        yield h


def _query(command: list[str], **flags: bool) -> str:
    items = [("command", c) for c in command]
    items += [(k, "true") for k, v in flags.items() if v]
    return "?" + urlencode(items)


async def _ws_exec(h: Harness, protocol: str, command: list[str], stdin: bytes | None,
                   tty: bool = False) -> tuple[dict[int, bytes], list[int], WsClient]:
    reader, writer, code, headers = await open_upgrade(
        h, "GET", EXEC + _query(command, stdin=stdin is not None, stdout=True,
                                stderr=not tty, tty=tty), ws_headers(protocol))
    assert code == 101
    assert headers["sec-websocket-protocol"] == protocol
    ws = WsClient(reader, writer)
    b64 = "base64" in protocol
    if stdin is not None:
        if b64:
            await ws.send(b"0" + base64.b64encode(stdin), text=True)
        else:
            await ws.send(b"\x00" + stdin)
            await ws.send(b"\xff\x00")  # v5 CLOSE stdin
    channels: dict[int, bytes] = {}
    order: list[int] = []
    async for op, data in ws.frames():
        if op not in (Opcode.BINARY, Opcode.TEXT):
            continue
        ch, payload = (data[0] - ord("0"), base64.b64decode(data[1:])) if b64 else (
            data[0], data[1:])
        order.append(ch)
        channels[ch] = channels.get(ch, b"") + payload
    return channels, order, ws


async def test_ws_v5_exec_carries_stdin_stdout_stderr_and_exit_status(harness: Harness) -> None:
    """v5: empty stdout first, stdin until CLOSE, Status with the exit code."""
    ch, order, _ = await _ws_exec(harness, "v5.channel.k8s.io", ["sh", "-c", SCRIPT], b"in\n")
    assert order[0] == 1
    assert ch[1] == b"in\nhello from main\n"
    assert ch[2] == b"oops\n"
    status = json.loads(ch[3])
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]


async def test_ws_v5_exec_reports_success_status(harness: Harness) -> None:
    """A zero exit is the bare Success Status."""
    ch, _, _ = await _ws_exec(harness, "v5.channel.k8s.io", ["echo", "hi"], None)
    assert ch[1] == b"hi\n"
    assert json.loads(ch[3]) == {"metadata": {}, "status": "Success"}


async def test_ws_v4_base64_exec_uses_text_frames(harness: Harness) -> None:
    """v4.base64: text messages, '0'+channel then base64."""
    ch, _, _ = await _ws_exec(harness, "v4.base64.channel.k8s.io", ["sh", "-c", "printf abc"],
                              None)
    assert ch[1] == b"abc"
    assert json.loads(ch[3])["status"] == "Success"


async def test_ws_exec_unknown_command_exits_127(harness: Harness) -> None:
    """An unknown command: ``sh: X: not found`` and exit code 127."""
    ch, _, _ = await _ws_exec(harness, "v5.channel.k8s.io", ["nosuch"], None)
    assert ch[2] == b"sh: nosuch: not found\n"
    assert json.loads(ch[3])["details"]["causes"][0]["message"] == "127"


async def test_ws_exec_tty_resize_is_recorded(harness: Harness) -> None:
    """With a tty, channel 4 resizes reach ``stty size``; stderr merges."""
    reader, writer, code, _ = await open_upgrade(
        harness, "GET", EXEC + _query(["sh"], stdin=True, stdout=True, tty=True),
        ws_headers("v5.channel.k8s.io"))
    assert code == 101
    ws = WsClient(reader, writer)
    await ws.send(b"\x04" + json.dumps({"Width": 120, "Height": 40}).encode())
    await ws.send(b"\x00stty size; echo e >&2\rexit 3\r")
    out = b""
    async for op, data in ws.frames():
        if op == Opcode.BINARY and data[:1] == b"\x01":
            out += data[1:]
        if op == Opcode.BINARY and data[:1] == b"\x03":
            assert json.loads(data[1:])["details"]["causes"][0]["message"] == "3"
    assert b"40 120\r\n" in out and b"e\r\n" in out


async def test_ws_exec_answers_ping(harness: Harness) -> None:
    """Pings are answered with pongs during a session."""
    reader, writer, code, _ = await open_upgrade(
        harness, "GET", EXEC + _query(["cat"], stdin=True, stdout=True),
        ws_headers("v5.channel.k8s.io"))
    assert code == 101
    ws = WsClient(reader, writer)
    await ws.ping(b"abc")
    pongs = []
    async for op, data in ws.frames():
        if op == Opcode.PONG:
            pongs.append(data)
            await ws.send(b"\xff\x00")
    assert pongs == [b"abc"]


async def test_ws_exec_refuses_unsupported_subprotocol(harness: Harness) -> None:
    """An unsupported subprotocol gets a 400 Status (kubectl then falls back)."""
    _, writer, code, headers = await open_upgrade(
        harness, "GET", EXEC + _query(["true"], stdout=True), ws_headers("v9.channel.k8s.io"))
    assert code == 400 and headers["content-type"] == "application/json"
    writer.close()


async def test_spdy_exec_refuses_unsupported_protocol_with_403(harness: Harness) -> None:
    """SPDY without a common protocol version: 403 with the accepted list."""
    _, writer, code, headers = await open_upgrade(
        harness, "POST", EXEC + _query(["true"], stdout=True),
        {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v9"})
    assert code == 403
    assert "v4.channel.k8s.io" in headers["x-accepted-stream-protocol-versions"]
    writer.close()


async def test_exec_rejects_unknown_container_before_upgrade(harness: Harness) -> None:
    """A wrong container name is a 400 Status, not a 101."""
    _, writer, code, _ = await open_upgrade(
        harness, "GET", EXEC + _query(["true"], stdout=True) + "&container=nope",
        ws_headers("v5.channel.k8s.io"))
    assert code == 400
    writer.close()


async def test_spdy_v4_exec_runs_with_streams_and_status(harness: Harness) -> None:
    """Raw SPDY v4: streams by streamType, stdin FIN, Status on the error stream."""
    reader, writer, code, headers = await open_upgrade(
        harness, "POST", EXEC + _query(["sh", "-c", SCRIPT], stdin=True, stdout=True,
                                       stderr=True),
        {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
         "X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    assert code == 101 and headers["x-stream-protocol-version"] == "v4.channel.k8s.io"
    c = SpdyClient(reader, writer)
    err = await c.open([("streamType", "error")])
    sin = await c.open([("streamType", "stdin")])
    out = await c.open([("streamType", "stdout")])
    serr = await c.open([("streamType", "stderr")])
    await c.send(sin, b"typed\n", fin=True)
    await c.pump(lambda s: {err, out, serr} <= s.fin)
    assert bytes(c.data[out]) == b"typed\nhello from main\n"
    assert bytes(c.data[serr]) == b"oops\n"
    assert json.loads(c.data[err])["reason"] == "NonZeroExitCode"
    writer.close()


async def _kubectl_exec(h: Harness, version: str, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    kubectl = require_kubectl(version)
    proc = await asyncio.create_subprocess_exec(
        kubectl, "--kubeconfig", str(h.kubeconfig), "exec", "-i", "p", "--", "sh", "-c", SCRIPT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **env})
    out, err = await asyncio.wait_for(proc.communicate(b"from kubectl\n"), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out, err


@pytest.mark.kubectl
@pytest.mark.parametrize(("version", "env", "upgrade"), [
    ("1.27", {}, "SPDY/3.1"),
    ("1.29", {}, "SPDY/3.1"),
    ("1.30", {}, "websocket"),
    ("1.33", {}, "websocket"),
    ("1.33", {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}, "SPDY/3.1"),
])
async def test_kubectl_exec_passes_stdin_stderr_and_exit_code(
        harness: Harness, version: str, env: dict[str, str], upgrade: str) -> None:
    """Real kubectl: stdin in, stdout/stderr apart, exit code 7 reported."""
    code, out, err = await _kubectl_exec(harness, version, env)
    assert code == 7
    assert out == b"from kubectl\nhello from main\n"
    assert err == b"oops\ncommand terminated with exit code 7\n"
    used = [hd.get("upgrade") for m, p, hd in harness.requests if p == EXEC]
    assert used == [upgrade]


@pytest.mark.kubectl
async def test_kubectl_exec_unknown_command_reports_127(harness: Harness) -> None:
    """kubectl prints the shell's message and 'command terminated with exit code 127'."""
    kubectl = require_kubectl("1.33")
    proc = await asyncio.create_subprocess_exec(
        kubectl, "--kubeconfig", str(harness.kubeconfig), "exec", "p", "--", "nosuch",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 127
    assert err == b"sh: nosuch: not found\ncommand terminated with exit code 127\n"


async def test_runtime_stop_ends_a_running_session(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """PodRuntime.stop() cancels sessions: the websocket closes promptly."""
    spy = SessionSpy(harness.runtimes["p"], monkeypatch)
    reader, writer, code, _ = await open_upgrade(
        harness, "GET", EXEC + _query(["sleep", "100"], stdout=True),
        ws_headers("v5.channel.k8s.io"))
    assert code == 101
    ws = WsClient(reader, writer)
    await spy.session()  # ``sleep 100`` is running in the pod
    harness.runtimes["p"].stop()
    frames = [op async for op, _ in ws.frames()]
    assert frames[-1] == Opcode.CLOSE


async def test_ws_attach_echoes_lines_and_logs_them(harness: Harness) -> None:
    """attach over v5: each stdin line comes back on stdout and enters the log."""
    reader, writer, code, _ = await open_upgrade(
        harness, "GET", "/api/v1/namespaces/default/pods/p/attach?stdin=true&stdout=true",
        ws_headers("v5.channel.k8s.io"))
    assert code == 101
    ws = WsClient(reader, writer)
    await ws.send(b"\x00hello attach\n")
    await ws.send(b"\xff\x00")
    out = b""
    async for op, data in ws.frames():
        if op == Opcode.BINARY and data[:1] == b"\x01":
            out += data[1:]
    assert out == b"hello attach\n"
    log = [x async for x in harness.runtimes["p"].log_stream(None)]
    assert log[-1] == b"hello attach\n"


async def test_spdy_v2_exec_reports_failure_as_plain_text(harness: Harness) -> None:
    """Before v4 the error stream carries only a text message, nothing on success."""
    for script, expected in (("exit 7", b"command terminated with exit code 7"), ("true", b"")):
        reader, writer, code, headers = await open_upgrade(
            harness, "POST", EXEC + _query(["sh", "-c", script], stdout=True),
            {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
             "X-Stream-Protocol-Version": "v2.channel.k8s.io"})
        assert code == 101 and headers["x-stream-protocol-version"] == "v2.channel.k8s.io"
        c = SpdyClient(reader, writer)
        err = await c.open([("streamType", "error")])
        out = await c.open([("streamType", "stdout")])
        await c.pump(lambda s, e=err, o=out: {e, o} <= s.fin)
        assert bytes(c.data[err]) == expected
        writer.close()


async def test_python_client_exec_over_v4_websocket(harness: Harness) -> None:
    """The ``kubernetes`` Python client (websocket v4) gets output and exit code."""
    from kubernetes import client
    from kubernetes.stream import stream

    def run() -> tuple[str, str, int | None]:
        cfg = client.Configuration()
        cfg.host = f"https://127.0.0.1:{harness.port}"
        cfg.ssl_ca_cert = str(harness.tmp / "ca.crt")
        cfg.api_key = {"authorization": "harness-admin-token"}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        with client.ApiClient(cfg) as api_client:
            api = client.CoreV1Api(api_client)
            resp = stream(api.connect_get_namespaced_pod_exec, "p", "default",
                          command=["sh", "-c", "echo out; echo err >&2; exit 5"],
                          stdout=True, stderr=True, stdin=False, tty=False,
                          _preload_content=False)
            try:
                resp.run_forever(timeout=WAIT)
                return resp.read_stdout(), resp.read_stderr(), resp.returncode
            finally:
                resp.close()
                resp.sock.shutdown()  # close() skips it once the server closed

    out, err, code = await asyncio.wait_for(asyncio.to_thread(run), WAIT + 5)
    assert (out, err, code) == ("out\n", "err\n", 5)


@pytest.mark.kubectl
@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_kubectl_exec_cat_round_trips_20mb_stdin(harness: Harness, version: str) -> None:
    """``exec -i -- cat`` returns 20 MB of stdin byte-exact (stdin backpressure path)."""
    import hashlib

    data = os.urandom(1 << 20) * 20
    proc = await asyncio.create_subprocess_exec(
        require_kubectl(version), "--kubeconfig", str(harness.kubeconfig), "exec", "-i", "p",
        "--", "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(data), WAIT)
    assert proc.returncode == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
