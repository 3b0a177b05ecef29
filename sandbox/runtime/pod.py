"""``PodRuntime``: what stands in for a pod's containers in the sandbox.

Nothing runs: each container is an in-memory filesystem, an environment, a
log buffer and the built-in command interpreter. exec runs a built-in; attach
connects to the container's "main process", which in the sandbox echoes each
stdin line to stdout and into the log (so attach, like logs, shows live
output); port-forward targets are loopback addresses declared on the pod.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from sandbox.runtime.fs import MemFS
from sandbox.runtime.logs import LogBuffer
from sandbox.runtime.process import ProcessIO
from sandbox.runtime.shell import Ctx, FuncOut, ShellExit, StdinIn, run_argv

log = logging.getLogger("sandbox.runtime")

LOG_EVERY_ANNOTATION = "sandbox.cluster-connect.dev/log-every"
PORTFORWARD_ANNOTATION_PREFIX = "portforward.sandbox.cluster-connect.dev/"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The shortest period of numbered log lines: keeps a typo from flooding the log.
MIN_LOG_EVERY_SECONDS = 0.05


class ContainerNotFound(LookupError):
    """The request named a container the pod does not have."""


class PortForwardError(Exception):
    """A port cannot be forwarded; ``str()`` is the reason kubelet would give."""


def parse_duration(text: str) -> float | None:
    """Go-style ``1s`` / ``500ms`` / ``2m`` / ``1m30s``; None when invalid."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * units[u] for n, u in parts)


class Container:
    """One container of a pod: filesystem, environment and log."""

    def __init__(self, spec: dict[str, Any], pod_name: str, log_every: float | None) -> None:
        self.name: str = spec.get("name", "main")
        self.image: str = spec.get("image", "")
        self.hostname = pod_name
        self.fs = MemFS()
        self.fs.write("/etc/hostname", (pod_name + "\n").encode())
        self.log = LogBuffer(every=log_every)
        self.env: dict[str, str] = {}
        self.set_spec(spec)
        self.log.write(f"container {self.name} started (image {self.image or '-'})\n".encode())

    def set_spec(self, spec: dict[str, Any]) -> None:
        """Take env/command/args from a (possibly updated) container spec."""
        env = {"PATH": BASE_PATH, "HOSTNAME": self.hostname}
        for item in spec.get("env") or []:
            if isinstance(item, dict) and item.get("name"):
                env[str(item["name"])] = str(item.get("value", ""))
        env.setdefault("HOME", "/root")
        self.env = env
        self.command: list[str] = list(spec.get("command") or [])
        self.args: list[str] = list(spec.get("args") or [])


class PodRuntime:
    """The containers of one sandbox pod.

    Args:
        pod: the pod object as stored by the API server (a JSON dict).
    """

    def __init__(self, pod: dict[str, Any]) -> None:
        self.containers: dict[str, Container] = {}
        self.stopped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pod: dict[str, Any] = {}
        self.update(pod)

    @property
    def name(self) -> str:
        return str(self._pod.get("metadata", {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self._pod.get("metadata", {}).get("namespace", "default"))

    @property
    def uid(self) -> str:
        return str(self._pod.get("metadata", {}).get("uid", ""))

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self._pod.get("metadata", {}).get("annotations") or {})

    def _log_every(self) -> float | None:
        raw = self.annotations.get(LOG_EVERY_ANNOTATION)
        every = parse_duration(raw) if raw else None
        return max(every, MIN_LOG_EVERY_SECONDS) if every else None

    def update(self, pod: dict[str, Any]) -> None:
        """Apply a new version of the pod: new containers start, env and
        annotations (log period, port-forward targets) take effect."""
        self._pod = pod
        every = self._log_every()
        for spec in (pod.get("spec") or {}).get("containers") or []:
            name = spec.get("name", "main")
            if name in self.containers:
                self.containers[name].set_spec(spec)
                self.containers[name].log.set_every(every)
            else:
                self.containers[name] = Container(spec, self.name, every)

    def stop(self) -> None:
        """The pod is gone: end log followers and every running session."""
        self.stopped = True
        for c in self.containers.values():
            c.log.close()
        for task in list(self._tasks):
            task.cancel()

    def track(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` (a streaming session) when the pod stops."""
        if self.stopped:
            task.cancel()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def container(self, name: str | None) -> Container:
        """A container by name; the default one when ``name`` is empty."""
        if not name:
            name = self.annotations.get(DEFAULT_CONTAINER_ANNOTATION) or ""
            if not name or name not in self.containers:
                if not self.containers:
                    raise ContainerNotFound(f"pod {self.name} has no containers")
                return next(iter(self.containers.values()))
        try:
            return self.containers[name]
        except KeyError:
            raise ContainerNotFound(
                f"container {name} is not valid for pod {self.name}"
            ) from None

    def log_stream(self, container: str | None, follow: bool = False,
                   tail_lines: int | None = None, since_seconds: int | None = None,
                   timestamps: bool = False,
                   limit_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Stream a container's log as ``pods/log`` does (raises ContainerNotFound)."""
        c = self.container(container)
        return c.log.stream(follow=follow and not self.stopped, tail_lines=tail_lines,
                            since_seconds=since_seconds, timestamps=timestamps,
                            limit_bytes=limit_bytes)

    async def exec(self, container: str | None, argv: list[str], io: ProcessIO) -> int:
        """Run a built-in command; returns its exit status (127: not found)."""
        c = self.container(container)
        env = dict(c.env)
        if io.tty:
            env.setdefault("TERM", "xterm")
        ctx = Ctx(list(argv), StdinIn(io), FuncOut(io.write_stdout), FuncOut(io.write_stderr),
                  env, c, io)
        log.info("exec pod=%s/%s container=%s argv0=%s", self.namespace, self.name, c.name,
                 argv[0] if argv else "")
        try:
            return await run_argv(ctx)
        except ShellExit as exc:
            return exc.code

    async def attach(self, container: str | None, io: ProcessIO) -> int:
        """Connect to the main process: stdin lines go to the log, the log's
        new lines come out on stdout. Ends at stdin EOF (Ctrl-D with a tty)
        when stdin is attached, or when the pod stops."""
        c = self.container(container)
        done = asyncio.Event()

        async def pump_stdin() -> None:
            if io.stdin is None:
                return
            while chunk := await io.read_stdin(4096):
                if io.tty:
                    # A raw-mode terminal sends CR for Enter and Ctrl-D for EOF.
                    chunk, eof, _ = chunk.partition(b"\x04")
                    c.log.write(chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
                    if eof:
                        break
                else:
                    c.log.write(chunk)
            c.log.flush()
            done.set()

        pump = asyncio.create_task(pump_stdin())
        last = c.log.last_seq
        try:
            while True:
                finished = done.is_set() or c.log.closed
                for seq, _ts, line in c.log.snapshot(last):
                    await io.write_stdout(line)
                    last = seq
                if finished:
                    return 0
                await c.log.wait(1.0)
        finally:
            pump.cancel()

    def portforward_target(self, port: int) -> tuple[str, int]:
        """The loopback address that pod port ``port`` forwards to."""
        raw = self.annotations.get(f"{PORTFORWARD_ANNOTATION_PREFIX}{port}")
        if not raw:
            raise PortForwardError(
                f"dial tcp4 127.0.0.1:{port}: connect: connection refused"
            )
        host, _, tport = raw.rpartition(":")
        host = host.strip("[]")
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(host)
            return host, int(tport)
        except ValueError:
            raise PortForwardError(
                f"port-forward target {raw!r} for port {port} is not a loopback host:port"
            ) from None
