"""Cost of the kubectl exec plugin: ``python -m bench.get_token [--calls 100]``.

kubectl runs ``arcctl get-token`` before every request. This times
``--calls`` runs of it with a valid cached token, each a new process, by two
paths alternating call by call (so load hits both alike):

* lean: the ``arcctl`` console script next to this interpreter (what
  arc-proxy writes into the kubeconfig; entry ``client.arcctl_entry``), which
  answers from the token cache with the standard library only; without an
  installed script, ``python -m client.arcctl_entry`` (runpy costs a little more);
* full: ``python -m client.arcctl get-token`` (pydantic, aiohttp, yaml, ...),
  what every call cost before;
* floor: ``python -c pass``, the interpreter's own start on this machine (what
  no code of ours removes; a loaded machine raises all three alike).

The cached token comes from a ``token_command`` config (an unsigned JWT that
expires in an hour): no issuer is needed, and both paths hand out the same
cached token. Prints p50/p95 wall ms per path, the same-run ratio, then one
JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_P50_MS = 50.0


def _fake_jwt() -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'iat': now, 'exp': now + 3600, 'oid': 'bench'})}.x"


def _arcctl() -> list[str]:
    script = Path(sys.executable).parent / "arcctl"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "client.arcctl_entry"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(calls: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(f"relay: {{url: 'https://127.0.0.1:1'}}\n"
                          f"auth: {{token_command: 'echo {_fake_jwt()}'}}\n")
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        paths = {
            "lean": [*_arcctl(), "get-token", "--config", str(config)],
            "full": [sys.executable, "-m", "client.arcctl", "get-token", "--config", str(config)],
            "floor": [sys.executable, "-c", "pass"],
        }
        # The first call fills the cache and the lean path's index.
        first = subprocess.run(paths["full"], env=env, capture_output=True, text=True, check=True)
        token = json.loads(first.stdout)["status"]["token"]
        wall: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(calls):
            for name, argv in paths.items():
                start = time.perf_counter()
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
                wall[name].append((time.perf_counter() - start) * 1000)
                if name != "floor":
                    assert json.loads(out.stdout)["status"]["token"] == token, name
    result: dict[str, object] = {"bench": "get_token", "calls": calls}
    for name, values in wall.items():
        result[f"{name}_p50_ms"] = round(statistics.median(values), 2)
        result[f"{name}_p95_ms"] = round(_percentile(values, 0.95), 2)
    result["full_over_lean_p50"] = round(float(str(result["full_p50_ms"])) / float(str(result["lean_p50_ms"])), 2)
    result["lean_minus_floor_p50_ms"] = round(
        float(str(result["lean_p50_ms"])) - float(str(result["floor_p50_ms"])), 2)
    result["goal_p50_ms"] = GOAL_P50_MS
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=100, help="calls per path (default 100)")
    r = run(p.parse_args().calls)
    print(f"{'path':6} {'p50 ms':>8} {'p95 ms':>8}")
    for name in ("lean", "full", "floor"):
        print(f"{name:6} {r[f'{name}_p50_ms']:>8} {r[f'{name}_p95_ms']:>8}")
    print(f"full / lean (p50, same run): {r['full_over_lean_p50']}x; lean - floor: "
          f"{r['lean_minus_floor_p50_ms']} ms; goal lean p50 <= {GOAL_P50_MS:.0f} ms")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
