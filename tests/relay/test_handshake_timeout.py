"""The client endpoint bounds authentication plus the websocket upgrade by
``limits.tunnel.handshake_timeout``: a handshake stuck behind an issuer that never
answers (its discovery document hangs) is answered 504 within the bound, and the
relay keeps serving everyone else meanwhile."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from certs import client_ssl_context
from relay import IssuerConfig, RelayConfig, RelayServer

HANDSHAKE_TIMEOUT = 0.5


async def test_client_handshake_stuck_on_issuer_discovery_is_504_within_the_bound(tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, then say nothing: not even a TLS handshake

    stall = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    issuer = f"https://127.0.0.1:{stall.sockets[0].getsockname()[1]}"
    relay = RelayServer(RelayConfig(
        host="127.0.0.1", port=0, state_dir=str(tmp_path / "relay"),
        issuers=(IssuerConfig(issuer, ("api://cluster-connect",)),),
        tunnel={"handshake_timeout": HANDSHAKE_TIMEOUT},
    ))
    await relay.start()
    assert relay.ca_pem is not None
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"iss": issuer, "aud": "api://cluster-connect", "oid": "x", "sub": "x",
                        "exp": int(time.time()) + 600}, key, algorithm="ES256", headers={"kid": "k1"})
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_ssl_context(relay.ca_pem))) as http:
            stuck = asyncio.ensure_future(http.get(relay.url + "/client/v1/connect",
                                                   headers={"Authorization": f"Bearer {token}"}))
            # Everyone else is still served while that handshake waits.
            async with http.get(relay.url + "/healthz") as ok:
                assert ok.status == 200
            async with asyncio.timeout(HANDSHAKE_TIMEOUT + 20):
                resp = await stuck
            async with resp:
                assert resp.status == 504
                body = await resp.json()
                assert body["error"]["code"] == "HandshakeTimeout"
    finally:
        for writer in held:
            writer.close()
        stall.close()
        await relay.stop()
