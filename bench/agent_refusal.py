"""Timing of the relay's agent-endpoint refusals (issue 12 item 3).

Run ``python -m bench.agent_refusal`` (a few seconds). One real relay on
127.0.0.1 with two registered clusters (EC key ``rg1/alpha``, RSA key
``rg1/beta``); assertions signed by a stranger's key claim an unknown cluster,
``rg1/alpha`` (wrong key) and ``rg1/beta`` (wrong key type). The three kinds
are interleaved request by request (so machine load hits them alike) and the
medians compared: an unauthenticated caller must not tell them apart, by the
answer (the tests prove byte-identical bodies) or by its timing. Prints one
JSON line with the medians (ms) and the same-run ratios.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from certs import generate_key_pair
from identity import sign_agent_assertion
from tests.support.relay import RelayEnv

ROUNDS = 500
WARMUP = 50
KINDS = {"unknown_cluster": "rg1/ghost", "wrong_key": "rg1/alpha", "wrong_key_type": "rg1/beta"}


async def measure() -> dict[str, float]:
    """Median refusal time (ms) per kind, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        env = await RelayEnv.start(Path(tmp))
        try:
            await env.register("rg1", "alpha")
            await env.register("rg1", "beta", generate_key_pair("rg1/beta", kind="rsa"))
            stranger = generate_key_pair("stranger")
            url = env.relay.url + "/agent/v1/connect"
            samples: dict[str, list[float]] = {k: [] for k in KINDS}
            for i in range(WARMUP + ROUNDS):
                for kind, cid in KINDS.items():
                    token = sign_agent_assertion(stranger.private_key_pem, cid, url)
                    start = time.perf_counter()
                    async with env.http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                        await resp.read()
                        assert resp.status == 401
                    if i >= WARMUP:
                        samples[kind].append(time.perf_counter() - start)
            return {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        finally:
            await env.close()


def main() -> None:
    med = asyncio.run(measure())
    out = {f"{k}_ms": round(v, 3) for k, v in med.items()}
    out["ratio_unknown_over_wrong_key"] = round(med["unknown_cluster"] / med["wrong_key"], 3)
    out["ratio_unknown_over_wrong_key_type"] = round(med["unknown_cluster"] / med["wrong_key_type"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
