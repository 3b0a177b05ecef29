"""Cost of a workload's token renewal: ``python -m bench.client_credentials [--renewals 30]``.

A CI job or a pod renews its token with the client-credentials grant; every
renewal authenticates the client again (there is no refresh token), reading
its credential file afresh. This times ``--renewals`` renewals against the
sandbox issuer on loopback (HTTPS, discovery done once) for each way the
client authenticates, rotating through them renewal by renewal so load hits
all alike:

* secret: ``auth.client_secret_file`` (the baseline);
* certificate: ``auth.client_certificate_file``, a ``private_key_jwt``
  assertion signed with an RSA-2048 key, verified by the issuer;
* federated: ``auth.federated_token_file``, an ES256 service-account token
  verified against the trusted issuer's key.

Prints the median wall ms per method, the ratio to the secret in the same
run, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from client.auth import TokenSource
from client.config import AuthConfig
from sandbox.idp import SandboxIdp
from tests.support.workload_identity import (
    CERTIFICATE_APP,
    DEMO_CI_APP,
    FEDERATED_APP,
    write_workload_directory,
)


async def _run(renewals: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-cc-") as d:
        tmp = Path(d)
        wl = write_workload_directory(tmp / "directory")
        async with SandboxIdp(tmp / "idp", wl.users_file) as idp:
            token_file, secret_file = tmp / "token", tmp / "secret"
            token_file.write_text(wl.sa_issuer.token())
            secret_file.write_text("ci-secret")
            base: dict[str, Any] = {"ca_file": idp.ca_file, "token_endpoint": idp.token_endpoint,
                                    "login": "client_credentials"}
            sources = {
                "secret": TokenSource(AuthConfig(**base, client_id=DEMO_CI_APP, client_secret_file=str(secret_file))),
                "certificate": TokenSource(AuthConfig(**base, client_id=CERTIFICATE_APP,
                                                      client_certificate_file=str(wl.cert_file),
                                                      client_key_file=str(wl.key_file))),
                "federated": TokenSource(AuthConfig(**base, client_id=FEDERATED_APP,
                                                    federated_token_file=str(token_file))),
            }
            times: dict[str, list[float]] = {name: [] for name in sources}
            for source in sources.values():
                await source.get()  # warm: TLS context, imports
            for _ in range(renewals):
                for name, source in sources.items():
                    source.invalidate()
                    start = time.perf_counter()
                    await source.get()
                    times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(ms) for name, ms in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--renewals", type=int, default=30, help="renewals per method (default 30)")
    args = p.parse_args()
    medians = asyncio.run(_run(args.renewals))
    for name, ms in medians.items():
        print(f"{name:12s} renewal median {ms:7.1f} ms   x{ms / medians['secret']:.2f} of secret")
    print(json.dumps({"renewals": args.renewals, **{f"{k}_median_ms": round(v, 1) for k, v in medians.items()},
                      **{f"{k}_to_secret": round(v / medians["secret"], 2) for k, v in medians.items()}}))


if __name__ == "__main__":
    main()
