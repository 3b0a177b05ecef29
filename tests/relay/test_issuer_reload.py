"""Issuers are reloaded without dropping sessions (issue 17 item 7): SIGHUP
makes arc-relay read its config again; a live stream survives, a newly added
issuer's token is accepted after it, a removed issuer's refused (its open
streams end at once), and a bad config is refused with one log line while the
old one stays in force."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from certs import client_ssl_context
from relay import IssuerConfig
from relay.config import ConfigError
from sandbox.idp import SandboxIdp
from tests.support.processes import ChildProcess
from tests.support.relay import ADMIN_OID, DEMO_OID, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT
from tunnel import ErrorCode, StreamRefused, StreamReset

SCOPE = "/resourceGroups/rg1/clusters/alpha"


async def test_reload_keeps_streams_adds_and_removes_issuers(tmp_path: Path) -> None:
    async with SandboxIdp(tmp_path / "idp-b") as b, running_env(tmp_path / "a") as env:
        echo = await start_echo_server()
        keys = await env.register("rg1", "alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        await env.wait_agent("rg1/alpha")
        await env.grant(DEMO_OID, "cluster-user", SCOPE)
        client = await env.client(env.token("demo"))
        stream = await client.open_stream(b"rg1/alpha", timeout=WAIT)
        await stream.write(b"before")
        assert await stream.read() == b"before"
        assert (await env.api("GET", "/api/v1/clusters", b.mint("admin")))[0] == 401

        a = env.relay.config.issuers[0]
        b_issuer = IssuerConfig(b.issuer, ("api://cluster-connect",), b.ca_file, alias="b", admins=(ADMIN_OID,))
        both = dataclasses.replace(env.relay.config, admins=(),
                                   issuers=(dataclasses.replace(a, admins=(ADMIN_OID,)), b_issuer))
        await env.relay.reload_identity(both)
        await stream.write(b"after")
        assert await stream.read() == b"after"  # the session and its stream lived through it
        # B is trusted now, and its admins are B's own (oidc.issuers[].admins).
        assert (await env.api("GET", "/api/v1/roleAssignments", b.mint("admin")))[0] == 200
        assert (await env.api("GET", "/api/v1/roleAssignments", b.mint("demo")))[0] == 403

        # A bad configuration changes nothing.
        broken = dataclasses.replace(both, issuers=(*both.issuers, IssuerConfig(
            "https://c.example/", ca_file=str(tmp_path / "missing.crt"))))
        with pytest.raises(ConfigError, match=r"missing\.crt"):
            await env.relay.reload_identity(broken)
        assert (await env.api("GET", "/api/v1/clusters", b.mint("admin")))[0] == 200

        # Only B now: A's tokens are refused and A's open stream ends.
        await env.relay.reload_identity(dataclasses.replace(both, issuers=(b_issuer,)))
        assert (await env.api("GET", "/api/v1/clusters", env.token("admin")))[0] == 401
        with pytest.raises(StreamReset) as reset:  # ended by the re-check, not left running
            await asyncio.wait_for(stream.read(), WAIT)
        assert reset.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(b"rg1/alpha", timeout=WAIT)
        assert refused.value.code == ErrorCode.FORBIDDEN
        echo.close()


async def _status(url: str, ca: bytes, token: str) -> int:
    """GET /api/v1/clusters with ``token`` (aiohttp: the issuers run on this loop)."""
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(ca))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get(f"{url}/api/v1/clusters", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


async def test_sighup_reloads_the_config_file_or_refuses_it_in_one_line(tmp_path: Path) -> None:
    """arc-relay as a process: SIGHUP with a bad file logs one line and keeps
    the old issuers; with a good one the new issuer's token is accepted."""
    async with SandboxIdp(tmp_path / "idp-a") as a, SandboxIdp(tmp_path / "idp-b") as b:
        config = tmp_path / "relay.yaml"

        def write(issuers: list[SandboxIdp], **extra: object) -> None:
            config.write_text(yaml.safe_dump({
                "listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"),
                "oidc": {"issuers": [{"issuer": i.issuer, "ca_file": i.ca_file} for i in issuers]}, **extra}))
        write([a])
        relay = await ChildProcess.start_async([sys.executable, "-m", "relay.cli", "--config", str(config)],
                                               ready="arc-relay: serving ", name="arc-relay")
        try:
            url = f"https://127.0.0.1:{relay.port}"
            ca = (tmp_path / "state" / "tls" / "ca.crt").read_bytes()
            assert await _status(url, ca, a.mint("demo")) == 200
            assert await _status(url, ca, b.mint("demo")) == 401
            write([a, b], admins=["x"])  # a bare admin beside two issuers
            relay.send_signal(signal.SIGHUP)
            line = await asyncio.to_thread(relay.err.wait_for, "configuration reload refused")
            assert "admins: a bare id could be any of the 2 trusted issuers' principal" in line
            assert await _status(url, ca, b.mint("demo")) == 401
            assert await _status(url, ca, a.mint("demo")) == 200
            write([a, b])
            relay.send_signal(signal.SIGHUP)
            await asyncio.to_thread(relay.err.wait_for, "issuer configuration reloaded")
            assert await _status(url, ca, b.mint("demo")) == 200
            relay.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(relay.wait, 30) == 0, relay.output()
        finally:
            relay.kill()
