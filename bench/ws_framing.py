"""Framing cost per websocket frame: the native transport's parser and framer
(tunnel/aio_ws_native.py) vs the ``websockets`` package's sans-I/O protocol.

Run ``python -m bench.ws_framing`` (a few seconds, one process, no sockets).
Both sides get the same bytes: N binary frames of 64 KiB (the tunnel's DATA
size) and of 64 bytes, fed in 16 KiB reads as a TLS socket delivers them;
what is timed is bytes in -> messages out (receive) and messages in -> bytes
out (send), for the server side receiving masked client frames and the client
side framing and masking them. Prints a table of microseconds per frame and
the ratio websockets / native, then one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable

from websockets.protocol import Protocol, Side, State

from tunnel.aio_ws_frames import OP_BINARY, encode_frame
from tunnel.aio_ws_native import NativeWebSocket

READ = 16 * 1024
SIZES = {"64KiB": 64 * 1024, "64B": 64}
FRAMES = {"64KiB": 2000, "64B": 50000}


class _NullTransport(asyncio.Transport):
    """Takes writes and discards them (the native framer's output)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _chunks(data: bytes) -> list[bytes]:
    return [data[i:i + READ] for i in range(0, len(data), READ)]


def _websockets(side: Side) -> Protocol:
    # Opened directly: framing only, as for the native side.
    return Protocol(side, state=State.OPEN, max_size=None)


def native_receive(chunks: list[bytes], count: int, payload: bytes) -> None:
    got = [0]

    def take(message: bytes) -> bool:  # dropped at once, as websockets' events are
        got[0] += 1
        return True

    ws = NativeWebSocket(is_client=False, max_message_size=1 << 20)
    ws.connection_made(_NullTransport())
    ws.start_websocket(None)
    ws.set_receiver(take)
    for chunk in chunks:
        ws.data_received(chunk)
    assert got[0] == count


def websockets_receive(chunks: list[bytes], count: int, payload: bytes) -> None:
    server = _websockets(Side.SERVER)
    n = 0
    for chunk in chunks:
        server.receive_data(chunk)
        n += len(server.events_received())
    assert n == count


def native_send(chunks: list[bytes], count: int, payload: bytes) -> None:
    ws = NativeWebSocket(is_client=True, max_message_size=1 << 20)
    ws.connection_made(_NullTransport())
    ws.start_websocket(None)
    for _ in range(count):
        ws.send_now((payload,))


def websockets_send(chunks: list[bytes], count: int, payload: bytes) -> None:
    client = _websockets(Side.CLIENT)
    for _ in range(count):
        client.send_binary(payload)
        client.data_to_send()


Case = Callable[[list[bytes], int, bytes], None]
CASES: dict[str, Case] = {
    "native_receive": native_receive, "websockets_receive": websockets_receive,
    "native_send": native_send, "websockets_send": websockets_send,
}


async def measure() -> dict[str, float]:
    """Microseconds per frame of each case (best of 3), and the ratios."""
    r: dict[str, float] = {}
    for label, size in SIZES.items():
        count = FRAMES[label]
        payload = os.urandom(size)
        wire = b"".join(encode_frame(OP_BINARY, payload, mask=True) for _ in range(count))
        chunks = _chunks(wire)
        for name, case in CASES.items():
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                case(chunks, count, payload)
                best = min(best, time.perf_counter() - start)
            r[f"{name}_{label}_us"] = best / count * 1e6
        for op in ("receive", "send"):
            r[f"{op}_{label}_websockets_over_native"] = (
                r[f"websockets_{op}_{label}_us"] / r[f"native_{op}_{label}_us"])
    return r


def main() -> int:
    r = asyncio.run(measure())
    print(f"{'us per frame':28}{'native':>10}{'websockets':>12}{'ratio':>8}")
    for label in SIZES:
        for op in ("receive", "send"):
            n, w = r[f"native_{op}_{label}_us"], r[f"websockets_{op}_{label}_us"]
            print(f"{op + ', ' + label:28}{n:10.2f}{w:12.2f}{w / n:8.2f}")
    print(json.dumps({k: round(v, 3) for k, v in r.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
