"""Per-request cost of proof-of-possession at kube-aad-proxy (docs/pop.md).

Run ``python -m bench.pop_verify`` (a few seconds, no network). For one SHR
around a 3 KiB access token, interleaved round by round so machine load hits
all alike: a bearer token's hot path (its SHA-256, the validator cache's key),
an SHR answered from kube-aad-proxy's SHR cache, and an SHR verified from
scratch (ES256 and RS256). Prints the medians (µs), the same-run ratios to the
bearer hot path, and one JSON line last.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent.kube_aad_proxy.pop import PopPolicy
from client.pop import PopKey, sign_shr
from identity import token_digest, verify_shr

ROUNDS = 2000
TARGET = "demo.default.kube-aad-proxy.cluster-connect.local"
AT = "eyJ" + "a" * 1200 + ".eyJ" + "b" * 1500 + "." + "c" * 342


def _time(fn: Callable[[], object], samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - start) * 1e6)


def main() -> None:
    es = PopKey(ec.generate_private_key(ec.SECP256R1()))
    rs = PopKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    es_shr, rs_shr = sign_shr(es, AT, TARGET), sign_shr(rs, AT, TARGET)
    policy = PopPolicy(frozenset({TARGET}))
    policy.unwrap(es_shr)
    runs: dict[str, list[float]] = {"bearer_digest": [], "shr_cached": [], "shr_verify_es256": [],
                                    "shr_verify_rs256": []}
    for _ in range(ROUNDS):
        _time(lambda: token_digest(AT), runs["bearer_digest"])
        _time(lambda: token_digest(policy.unwrap(es_shr).access_token), runs["shr_cached"])
        _time(lambda: verify_shr(es_shr, targets=frozenset({TARGET}), now=time.time(), max_age=300, skew=60),
              runs["shr_verify_es256"])
        _time(lambda: verify_shr(rs_shr, targets=frozenset({TARGET}), now=time.time(), max_age=300, skew=60),
              runs["shr_verify_rs256"])
    medians = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    base = medians["bearer_digest"]
    ratios = {k: round(v / base, 1) for k, v in medians.items()}
    for name, value in medians.items():
        print(f"{name:>18}: {value:9.2f} µs  (x{ratios[name]} the bearer hot path)")
    print(json.dumps({"bench": "pop_verify", "rounds": ROUNDS, "median_us": medians, "ratio_to_bearer": ratios}))


if __name__ == "__main__":
    main()
