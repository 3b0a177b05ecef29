"""The far end of the two-process adapter test: a tunnel server in its own process.

Run as ``python -m tests.tunnel.peer_process``. It serves one websocket endpoint
``/tunnel`` on 127.0.0.1 (port chosen by the OS), prints ``{"port": N}`` on one
line of stdout once listening, and exits when stdin closes (or on SIGTERM).

Stream targets it understands:
    ``echo``              every byte back, FIN after the peer's FIN;
    ``sha256``            read to FIN, answer the 32-byte digest, FIN;
    ``source:N:SEED``     send N bytes of ``random.Random(SEED).randbytes(N)``, FIN.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys

from aiohttp import web

from tunnel import (
    ErrorCode,
    TunnelSession,
    TunnelStream,
    server_websocket_response,
)


async def handle_stream(stream: TunnelStream) -> None:
    """Serve one stream according to its target."""
    target = stream.target
    if target == b"echo":
        stream.accept()
        while data := await stream.read(1 << 20):
            await stream.write(data)
        await stream.write_eof()
    elif target == b"sha256":
        stream.accept()
        digest = hashlib.sha256()
        while data := await stream.read(1 << 20):
            digest.update(data)
        await stream.write(digest.digest())
        await stream.write_eof()
    elif target.startswith(b"source:"):
        _, size, seed = target.split(b":")
        stream.accept()
        await stream.write(random.Random(int(seed)).randbytes(int(size)))
        await stream.write_eof()
    else:
        stream.reject(ErrorCode.NOT_FOUND, "unknown target")


async def handle_websocket(request: web.Request) -> web.StreamResponse:
    """Run one tunnel session per websocket."""
    ws = server_websocket_response()
    await ws.prepare(request)
    await TunnelSession(ws, is_client=False, name="peer", on_stream=handle_stream).run()
    return ws


async def main() -> None:
    """Serve until stdin reaches EOF (the parent closed it or died)."""
    app = web.Application()
    app.router.add_get("/tunnel", handle_websocket)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port}), flush=True)
    try:
        # stdin reaches EOF when the parent closes it or dies: never outlive it.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
