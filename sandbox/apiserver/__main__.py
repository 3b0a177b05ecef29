"""``python -m sandbox.apiserver --port 0 --state-dir D --version 1.33.0 --ready-file F``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from certs import write_secret_file
from sandbox.apiserver.server import SandboxApiServer


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sandbox.apiserver", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="listen address (loopback only)")
    p.add_argument("--port", type=int, default=0, help="listen port; 0 picks a free one")
    p.add_argument("--state-dir", required=True, help="directory for the CA, kubeconfig and ready data")
    p.add_argument("--version", default="1.33.0", help="Kubernetes version to report (e.g. 1.33.0)")
    p.add_argument("--ready-file", help="write the server's JSON description here once serving")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    server = SandboxApiServer(args.state_dir, args.version, args.host, args.port)
    await server.start()
    if args.ready_file:
        write_secret_file(args.ready_file, json.dumps(server.ready_info()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; user errors print one line and exit 2."""
    args = _args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parts = args.version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        print(f"error: --version {args.version!r} is not a Kubernetes version like 1.33.0", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(args))
    except OSError as exc:
        if args.debug:
            raise
        print(f"error: cannot start the API server: {exc.strerror or exc} (check --host/--port)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
