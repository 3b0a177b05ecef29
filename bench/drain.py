"""Rolling restart of a relay tier under load: ``python -m bench.drain``.

Three relays (in this process) on one SQLite file, a real ``redis-server``
(presence), peer links, and a real HAProxy (``leastconn``, health-checking each
relay's ``/readyz``) in front. ``--agents`` agents (real tunnel sessions, each
its own registered cluster, streams piped to one echo server) and one arc-proxy
(``RelaySessionKeeper`` behind a real ``LocalListener``, cluster 0) dial HAProxy.
Steady load: ``--workers`` loops of short requests through arc-proxy (connect,
64-byte echo, close), and one long-lived stream per restart that must survive
it. Each relay in turn is stopped as on SIGTERM (``RelayServer.stop``) and
started again on the same ports.

Reported per restart: agents the relay held, seconds until every one of them
had a session on another relay (make-before-break), seconds the stop took (the
long-lived stream ends just after its agent moved, so this is mostly the move),
and overall: short requests sent and failed, long-lived streams broken. Table on
stderr, one JSON line last on stdout. Issue 16's goals: 0 failed short
requests, 0 broken streams that finish within the grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.connector import Connector
from client.auth import TokenSource
from client.config import AuthConfig, ClientConfig
from client.listener import LocalListener
from client.relay_client import RelaySessionKeeper
from demo.haproxy import Backend, haproxy_binary, haproxy_child, haproxy_config, listening
from demo.processes import free_port
from relay import RelayServer
from relay.peering import issue_peer_files
from relay.presence import PresenceConfig
from tests.support.redis import RedisServer
from tests.support.relay import DEMO_OID, RelayEnv
from tests.support.servers import server_port, start_echo_server

WAIT = 60.0
PAYLOAD = b"x" * 64


async def _until(predicate: Any, what: str, timeout: float = WAIT) -> float:
    """Poll ``predicate`` every 5 ms; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return loop.time() - start


async def _echo(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            got = await reader.readexactly(len(payload))
        if got != payload:
            raise RuntimeError("echo mismatch")
    finally:
        writer.close()


async def run(agents: int, workers: int, tmp: Path) -> dict[str, Any]:
    binary = haproxy_binary()
    if binary is None:
        raise SystemExit("bench.drain needs haproxy (Debian package haproxy)")
    redis = RedisServer(tmp / "redis")
    redis.start()
    lb_port = free_port()
    url = f"https://127.0.0.1:{lb_port}"
    names = ["relay-1", "relay-2", "relay-3"]
    peers = issue_peer_files(tmp / "peers", names)
    ports = {n: (free_port(), free_port()) for n in names}

    def overrides(name: str) -> dict[str, Any]:
        return {"port": ports[name][0], "health_port": ports[name][1], "peering": peers[name],
                "presence": PresenceConfig(redis_url=redis.url, replica_id=name)}

    env = await RelayEnv.start(tmp, public_url=url, drain_seconds=30.0, agent_move_seconds=10.0,
                               agent_grace_seconds=5.0, **overrides(names[0]))
    relays: dict[str, RelayServer] = {names[0]: env.relay}
    for name in names[1:]:
        relays[name] = RelayServer(dataclasses.replace(env.relay.config, **overrides(name)))
        await relays[name].start()
    config_file = tmp / "haproxy.cfg"
    config_file.write_text(haproxy_config(lb_port, [Backend(n, *ports[n]) for n in names]))
    haproxy = haproxy_child(binary, config_file, tmp).start()
    echo = await start_echo_server()
    keeper: RelaySessionKeeper | None = None
    listener: LocalListener | None = None
    try:
        await _until(lambda: listening(lb_port), "haproxy to listen")
        clusters = [f"rg1/c{i}" for i in range(agents)]
        connectors: dict[str, Connector] = {}
        for cid in clusters:
            keys = await env.register("rg1", cid.split("/")[1])
            connectors[cid] = await env.start_agent(cid, keys, ("127.0.0.1", server_port(echo)), relay_url=url)
        await env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1")

        def holder(cid: str) -> str | None:
            for name, relay in relays.items():
                state = relay.state
                if state is not None and state.accepting and state.directory.get(cid) is not None:
                    return name
            return None
        await _until(lambda: all(holder(c) for c in clusters), "every agent to connect")
        idp = env.idp
        auth = AuthConfig(token_endpoint=idp.token_endpoint, ca_file=str(idp.ca_file),
                          client_id=idp.cli_client_id, username="demo@contoso.example", password="demo-password")
        assert env.relay.ca_file is not None
        keeper = RelaySessionKeeper(ClientConfig(relay_url=url, relay_ca_file=str(env.relay.ca_file), auth=auth),
                                    TokenSource(auth), name="bench-drain")
        await keeper.start()
        listener = LocalListener(keeper, clusters[0].encode(), port=0)
        port = await listener.bind()
        await listener.serve()

        quiet = []
        for _ in range(20):  # one request at a time, before any load: the baseline
            t = time.monotonic()
            await _echo(port, PAYLOAD)
            quiet.append(time.monotonic() - t)
        quiet.sort()
        sent = failed = 0
        began = time.monotonic()
        errors: list[str] = []
        done = asyncio.Event()

        async def worker() -> None:
            nonlocal sent, failed
            while not done.is_set():
                sent += 1
                try:
                    await _echo(port, PAYLOAD)
                except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    failed += 1
                    errors.append(type(exc).__name__)

        load = [asyncio.ensure_future(worker()) for _ in range(workers)]
        rows = []
        broken = 0
        for name in names:
            held = [c for c in clusters if holder(c) == name]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # long-lived
            writer.write(b"before ")
            await asyncio.wait_for(reader.readexactly(7), WAIT)
            before = sent
            start = time.monotonic()
            stop = asyncio.ensure_future(relays[name].stop())
            moved = await _until(lambda held=held, name=name: all(holder(c) not in (None, name) for c in held),
                                 f"agents of {name} to move")
            try:
                writer.write(b"after")
                await asyncio.wait_for(reader.readexactly(5), WAIT)
                writer.write_eof()
                await asyncio.wait_for(reader.read(), WAIT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                broken += 1
            writer.close()
            await stop
            stopped = time.monotonic() - start
            relays[name] = RelayServer(relays[name].config)
            await relays[name].start()
            await _until(lambda before=before: sent >= before + 20, "requests to flow again")
            rows.append({"relay": name, "agents": len(held), "move_s": round(moved, 3),
                         "stop_s": round(stopped, 3)})
        done.set()
        await asyncio.gather(*load)
        return {"agents": agents, "workers": workers, "quiet_request_p50_ms": round(quiet[10] * 1000, 1),
                "requests_per_s": round(sent / (time.monotonic() - began), 1),
                "requests": sent, "failed_requests": failed,
                "failure_kinds": sorted(set(errors)), "long_streams_broken": broken, "restarts": rows,
                "loadavg_1m": round(os.getloadavg()[0], 2)}
    finally:
        if listener is not None:
            await listener.close()
        if keeper is not None:
            await keeper.close()
        await env.close()
        for relay in relays.values():
            await relay.stop(drain_seconds=0.5)
        haproxy.stop()
        echo.close()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50, help="agents (each its own cluster)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent short-request loops")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        result = asyncio.run(run(args.agents, args.workers, Path(tmp)))
    out = sys.stderr
    print(f"{'relay':<8} {'agents':>6} {'move s':>7} {'stop s':>7}", file=out)
    for row in result["restarts"]:
        print(f"{row['relay']:<8} {row['agents']:>6} {row['move_s']:>7} {row['stop_s']:>7}", file=out)
    print(f"short request p50 before the restarts {result['quiet_request_p50_ms']} ms; "
          f"under load {result['requests_per_s']}/s", file=out)
    print(f"short requests {result['requests']}, failed {result['failed_requests']} "
          f"{result['failure_kinds']}; long-lived streams broken {result['long_streams_broken']} of 3; "
          f"loadavg {result['loadavg_1m']}", file=out)
    print(json.dumps(result))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
