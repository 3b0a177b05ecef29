"""``arcctl get-token --pop`` as kubectl runs it, against the sandbox issuer on
loopback: a key pair kept 0600 beside the token cache, a token bound to it,
and a signed request for the named cluster (docs/pop.md)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from pathlib import Path

import jwt
import pytest
import yaml

from identity import verify_shr
from sandbox.idp import SandboxIdp

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
TARGET = "demo.default.kube-aad-proxy.cluster-connect.local"


def _config(tmp_path: Path, idp: SandboxIdp) -> Path:
    ca = tmp_path / "idp-ca.pem"
    ca.write_bytes(idp.ca_pem)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "relay": {"url": "https://127.0.0.1:1"},
        "auth": {"token_endpoint": idp.token_endpoint, "ca_file": str(ca), "client_id": idp.cli_client_id,
                 "username": "demo@contoso.example", "password": "demo-password",
                 "scope": "api://cluster-connect/.default"},
    }))
    return path


async def _arcctl(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl_entry", *args, env=env, cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_get_token_pop_prints_signed_request_around_bound_token(tmp_path: Path, idp: SandboxIdp) -> None:
    """The ExecCredential's token is an SHR for --pop-target whose at is bound (cnf.kid) to the
    key in pop-key.pem (mode 0600); it expires within the SHR lifetime; a second call
    reuses the cached bound token (no second token request) with a new nonce."""
    config = _config(tmp_path, idp)
    code, out, err = await _arcctl(tmp_path, "get-token", "--pop", "--pop-target", TARGET, "--config", str(config))
    assert code == 0, err
    cred = json.loads(out)["status"]
    shr = verify_shr(cred["token"], targets=frozenset({TARGET}), now=time.time(), max_age=300, skew=60)
    claims = jwt.decode(shr.access_token, options={"verify_signature": False})
    assert claims["cnf"] == {"kid": shr.key_id}
    key_file = tmp_path / "cache" / "cluster-connect" / "pop-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    expires = time.mktime(time.strptime(cred["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert expires <= time.time() + 240 + 1
    requests = idp.request_counts["token"]
    code, out, err = await _arcctl(tmp_path, "get-token", "--pop", "--pop-target", TARGET, "--config", str(config))
    assert code == 0, err
    again = json.loads(out)["status"]["token"]
    assert again != cred["token"]
    second = verify_shr(again, targets=frozenset({TARGET}), now=time.time(), max_age=300, skew=60)
    assert (second.access_token, second.key_id) == (shr.access_token, shr.key_id)
    assert idp.request_counts["token"] == requests


async def test_get_token_pop_without_target_fails_in_one_line(tmp_path: Path, idp: SandboxIdp) -> None:
    """--pop without --pop-target: one line naming the option, non-zero, no traceback."""
    code, _, err = await _arcctl(tmp_path, "get-token", "--pop", "--config", str(_config(tmp_path, idp)))
    assert code != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--pop-target" in lines[0], err
