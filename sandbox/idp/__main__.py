"""``python -m sandbox.idp``: run the development OIDC issuer.

Writes the ready file (JSON: issuer, token_endpoint, jwks_uri, tenant_id,
ca_file, ca_pem, port, ...) once serving; SIGTERM/SIGINT stop it cleanly;
SIGHUP rotates the signing key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from certs import write_secret_file
from sandbox.idp.server import SandboxIdp
from sandbox.idp.users import DirectoryError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sandbox.idp", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="listen address (loopback; default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port, 0 for a free one")
    p.add_argument("--state-dir", required=True, help="directory for the CA and signing keys")
    p.add_argument("--users", default=None, help="users YAML (default: built-in demo users)")
    p.add_argument("--ready-file", default=None, help="write the JSON description here when serving")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    idp = SandboxIdp(args.state_dir, args.users, args.host, args.port)
    await idp.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, idp.rotate_keys)
    try:
        info = json.dumps(idp.info(), indent=2)
        if args.ready_file:
            write_secret_file(args.ready_file, info + "\n")
        else:
            print(info, flush=True)
        await stop.wait()
    finally:
        await idp.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(_serve(args))
    except DirectoryError as exc:
        print(f"sandbox.idp: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug:
            raise
        print(
            f"sandbox.idp: cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            "(pick another --port, or 0 for a free one)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
