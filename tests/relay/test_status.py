"""connectivityStatus is derived from live sessions, never left behind by a crash.

In process: Connected exactly while a session is live, Offline the moment it
ends (lastConnectivityTime kept), connect/disconnect/metadata persisted
write-behind, stale ``Connected`` rows reconciled at start-up. As processes: a
relay killed with SIGKILL while its agent was connected, restarted after the
agent went away, reports the cluster Offline, and arc-proxy's start-up check
says the agent is offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from pathlib import Path

import aiohttp
import yaml

from agent.connector import Connector, ConnectorConfig
from certs import CertificateAuthority, client_ssl_context, generate_key_pair
from relay.registry import Cluster, SqliteDatabase, SqliteRegistry
from sandbox.idp import SandboxIdp
from tests.support.processes import ChildProcess
from tests.support.relay import ADMIN_OID, RelayEnv, running_env
from tests.support.waits import WAIT


def _stored_status(db_file: Path, cid: str) -> str | None:
    """The status column as persisted (read-only, beside the relay's own connection)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT connectivity_status FROM clusters WHERE id = ?", (cid,)).fetchone()
    return str(row[0]) if row else None


async def test_relay_status_follows_live_session_and_is_written_behind(relay_env: RelayEnv) -> None:
    """Connected while the session lives; Offline as soon as it ends, with
    lastConnectivityTime kept; the store catches up at the next flush."""
    keys = await relay_env.register("rg1", "alpha")
    registry = relay_env.state.registry
    assert (await registry.get("rg1/alpha")).connectivity_status == "Connecting"
    connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9))
    await relay_env.wait_agent("rg1/alpha")
    assert (await registry.get("rg1/alpha")).connectivity_status == "Connected"
    await registry.flush()
    assert (await registry.store.get("rg1/alpha")).connectivity_status == "Connected"
    await connector.stop()
    async with asyncio.timeout(WAIT):
        while relay_env.state.directory.is_present("rg1/alpha"):
            await asyncio.sleep(0.01)
    cluster = await registry.get("rg1/alpha")
    assert cluster.connectivity_status == "Offline" and cluster.last_connectivity_time
    await registry.flush()
    assert (await registry.store.get("rg1/alpha")).connectivity_status == "Offline"
    assert registry.flushes >= 2


async def test_relay_reconciles_stale_connected_rows_at_start(tmp_path: Path) -> None:
    """A database left saying Connected (a crash) is corrected before serving."""
    db = SqliteDatabase(tmp_path / "relay" / "relay.db")
    store = SqliteRegistry(db)
    await store.put(Cluster(name="alpha", resource_group="rg1",
                            agent_public_key_certificate=generate_key_pair("a").certificate_pem.decode()))
    await store.set_connectivity("rg1/alpha", "Connected")
    db.close()
    async with running_env(tmp_path) as env:
        assert (await env.state.registry.store.get("rg1/alpha")).connectivity_status == "Offline"
        status, body = await env.api("GET", "/api/v1/resourceGroups/rg1/clusters/alpha",
                                     env.token("admin"))
        assert status == 200 and body["connectivityStatus"] == "Offline"
        assert body["lastConnectivityTime"]


async def _start_relay_process(config_file: Path) -> ChildProcess:
    """arc-relay as a process; it binds the port its config names (0: any) and prints its URL."""
    return await ChildProcess.start_async([sys.executable, "-m", "relay.cli", "--config", str(config_file)],
                                          ready="arc-relay: serving ", name="arc-relay")


async def test_relay_killed_while_agent_connected_reports_offline_after_restart(tmp_path: Path) -> None:
    """SIGKILL the relay while the agent is connected (the store says
    Connected), let the agent go away, restart the relay: the cluster is
    Offline with its lastConnectivityTime, and arc-proxy refuses to start
    with the one-line "agent offline" error."""
    idp = SandboxIdp(tmp_path / "idp")
    await idp.start()
    state_dir = tmp_path / "relay"
    config_file = tmp_path / "relay.yaml"
    config_file.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0", "state_dir": str(state_dir),
        "oidc": {"issuers": [{"issuer": idp.issuer, "audiences": ["api://cluster-connect"],
                              "ca_file": str(idp.ca_file)}]},
        "admins": [ADMIN_OID], "limits": {"status_flush_seconds": 0.05}}))
    relay = await _start_relay_process(config_file)
    relay_url = f"https://127.0.0.1:{relay.port}"
    ca_pem = (state_dir / "tls" / "ca.crt").read_bytes()
    keys = generate_key_pair("rg1/alpha")
    serving_ca = CertificateAuthority.create("alpha serving CA").certificate_pem.decode()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(ca_pem)))
    admin = {"Authorization": f"Bearer {idp.mint('admin')}"}
    cluster_url = f"{relay_url}/api/v1/resourceGroups/rg1/clusters/alpha"
    connector = Connector(ConnectorConfig(relay_url=relay_url, cluster_id="rg1/alpha",
                                          private_key_pem=keys.private_key_pem, upstream=("127.0.0.1", 9),
                                          relay_ca_pem=ca_pem))
    agent = asyncio.ensure_future(connector.run())
    try:
        async with http.put(cluster_url, headers=admin, json={
                "agentPublicKeyCertificate": keys.certificate_pem.decode(),
                "servingCaCertificate": serving_ca, "tlsServerName": "kube-aad-proxy.alpha"}) as resp:
            assert resp.status in (200, 201), await resp.text()
        assert await connector.wait_connected(WAIT)
        async with asyncio.timeout(WAIT):
            while _stored_status(state_dir / "relay.db", "rg1/alpha") != "Connected":
                await asyncio.sleep(0.02)
        relay.kill()
        await connector.stop()
        await asyncio.wait_for(agent, WAIT)
        assert _stored_status(state_dir / "relay.db", "rg1/alpha") == "Connected"  # what the crash left

        relay = await _start_relay_process(config_file)  # restarted on a port of its own
        relay_url = f"https://127.0.0.1:{relay.port}"
        cluster_url = f"{relay_url}/api/v1/resourceGroups/rg1/clusters/alpha"
        async with http.get(cluster_url, headers=admin) as resp:
            body = await resp.json()
        assert body["connectivityStatus"] == "Offline" and body["lastConnectivityTime"], body
        assert _stored_status(state_dir / "relay.db", "rg1/alpha") == "Offline"

        client_config = tmp_path / "client.yaml"
        token_file = tmp_path / "token"
        token_file.write_text(idp.mint("admin"))
        client_config.write_text(yaml.safe_dump({
            "relay": {"url": relay_url, "ca_file": str(state_dir / "tls" / "ca.crt")},
            "auth": {"token_command": f"cat {token_file}"}}))
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client.proxy_cli", "-n", "alpha", "-g", "rg1", "--port", "0",
            "--file", str(tmp_path / "kubeconfig"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "ARC_CONFIG": str(client_config)})
        _, err = await asyncio.wait_for(proxy.communicate(), WAIT * 2)
        text = err.decode()
        assert proxy.returncode != 0
        assert "offline" in text and "rg1/alpha" in text and "Traceback" not in text, text
        assert text.strip().count("\n") == 0, text
    finally:
        await asyncio.to_thread(relay.stop)
        if not agent.done():
            await connector.stop()
            await asyncio.wait_for(agent, WAIT)
        await http.close()
        await idp.stop()


async def test_status_flush_never_holds_the_connection_lookups_use(tmp_path: Path) -> None:
    """While a write-behind flush is inside its transaction (here: held open
    on the writer's connection), a cluster lookup on the relay's connection
    answers at once; the flush writes in chunks of FLUSH_CHUNK clusters, all
    of them."""
    import threading

    from relay.status import FLUSH_CHUNK, LiveStatusRegistry

    path = tmp_path / "relay.db"
    store, writer = SqliteRegistry(SqliteDatabase(path)), SqliteRegistry(SqliteDatabase(path))
    certificate = generate_key_pair("a").certificate_pem.decode()
    count = FLUSH_CHUNK * 2 + 1
    for i in range(count):
        await store.put(Cluster(name=f"c{i}", resource_group="rg1", agent_public_key_certificate=certificate))
    registry = LiveStatusRegistry(store, lambda cid: False, 0.0, writer=writer)
    inside, release = threading.Event(), threading.Event()
    chunks: list[int] = []
    apply_updates = writer._apply_updates

    def held_apply(batch: dict[str, dict[str, object]]) -> None:  # on the writer's worker thread
        chunks.append(len(batch))
        with writer.db.transaction() as cur:  # the write lock, held like a slow commit
            cur.execute("UPDATE clusters SET agent_version = 'x' WHERE id = ?", ("rg1/c0",))
            inside.set()
            release.wait(WAIT)
        apply_updates(batch)

    writer._apply_updates = held_apply  # type: ignore[method-assign]
    for i in range(count):
        await registry.set_connectivity(f"rg1/c{i}", "Connected")
    flush = asyncio.ensure_future(registry.flush())
    try:
        assert await asyncio.to_thread(inside.wait, WAIT)
        async with asyncio.timeout(2.0):  # blocked on the flush, this would wait for `release`
            cluster = await registry.get("rg1/c1")
        assert cluster is not None and cluster.agent_public_key_certificate == certificate
    finally:
        release.set()
        await flush
    assert chunks == [FLUSH_CHUNK, FLUSH_CHUNK, 1]
    assert all(c.last_connectivity_time for c in await store.list("rg1"))
    assert registry.flushes == 1


async def test_relay_flushes_status_through_its_own_connection(relay_env: RelayEnv) -> None:
    """The relay's write-behind uses a database connection other than the one
    the event loop reads clusters through."""
    registry = relay_env.state.registry
    assert registry.writer is not registry.store
    assert registry.writer.db is not registry.store.db
