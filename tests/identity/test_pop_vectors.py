"""Proof-of-possession format (docs/pop.md): the test vectors there are what
client/pop.py signs and what identity/pop.py verifies; each check of
``verify_shr`` refuses what it must."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs import load_private_key
from client.pop import PopKey, sign_shr
from identity import TokenInvalid
from identity.pop import bound_key_id, is_signed_request, jwk_thumbprint, verify_shr

DOC = Path(__file__).resolve().parents[2] / "docs" / "pop.md"
TARGET = "demo.default.kube-aad-proxy.cluster-connect.local"
TS = 1796371200


def _vectors() -> tuple[PopKey, dict[str, str]]:
    text = DOC.read_text()
    pem = re.search(r"```pem\n(.+?)```", text, re.S)
    block = re.search(r"```vector\n(.+?)```", text, re.S)
    assert pem and block, "docs/pop.md lost its test vectors"
    key = load_private_key(pem.group(1).encode())
    assert not isinstance(key, ec.EllipticCurvePrivateKey)  # RS256: deterministic, hence a fixed token
    fields = dict(line.split(": ", 1) for line in block.group(1).strip().splitlines())
    return PopKey(key), fields  # type: ignore[arg-type]


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def test_pop_vectors_client_signs_the_documented_token() -> None:
    """The fixed key, at, ts, nonce and u give exactly the documented key id, req_cnf and token."""
    key, v = _vectors()
    assert key.key_id == v["key_id"] == jwk_thumbprint(key.jwk)
    assert key.req_cnf() == v["req_cnf"]
    token = sign_shr(key, v["at"], v["u"], ts=int(v["ts"]), nonce=v["nonce"])
    assert token == v["token"]
    header, payload, _ = token.split(".")
    assert (header, payload) == (v["header"], v["payload"])
    assert _b64json(header) == {"alg": "RS256", "kid": v["key_id"], "typ": "pop"}
    assert set(_b64json(payload)) == {"at", "cnf", "nonce", "ts", "u"}


def test_pop_vectors_verifier_accepts_the_documented_token() -> None:
    """identity/pop.py verifies the documented token within its window and returns at and key id."""
    _, v = _vectors()
    shr = verify_shr(v["token"], targets=frozenset({v["u"]}), now=int(v["ts"]) + 10, max_age=300, skew=60)
    assert (shr.access_token, shr.key_id, shr.target, shr.ts) == (v["at"], v["key_id"], v["u"], float(v["ts"]))
    assert is_signed_request(v["token"]) and not is_signed_request(v["at"])


def test_pop_es256_round_trip_and_thumbprints_agree() -> None:
    """A P-256 key signs ES256; client and identity compute the same thumbprint."""
    key = PopKey(ec.generate_private_key(ec.SECP256R1()))
    token = sign_shr(key, "a.b.c", TARGET, ts=TS, nonce="n")
    shr = verify_shr(token, targets=frozenset({TARGET}), now=TS, max_age=300, skew=60)
    assert shr.key_id == key.key_id == jwk_thumbprint(key.jwk)
    assert bound_key_id({"cnf": {"kid": key.key_id}}) == key.key_id
    assert bound_key_id({"cnf": {"jwk": key.jwk}}) == key.key_id
    assert bound_key_id({}) is None


def _tamper(token: str, **changes: Any) -> str:
    h, p, s = token.split(".")
    payload = _b64json(p)
    payload.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{h}.{body}.{s}"


@pytest.mark.parametrize(("case", "reason"), [
    ("other cluster", "proof-of-possession token is for another cluster"),
    ("expired", "proof-of-possession token expired"),
    ("future", "proof-of-possession token signed in the future"),
    ("swapped at", "bad proof-of-possession signature"),
    ("other key", "proof-of-possession key id does not match its key"),
    ("oversized", "malformed proof-of-possession token"),
])
def test_pop_verifier_refuses(case: str, reason: str) -> None:
    """Each check refuses with its own reason: wrong u, stale or future ts, a
    changed at under the old signature, a JWK that is not the signer's kid, one
    larger than MAX_SHR_BYTES."""
    key = PopKey(ec.generate_private_key(ec.SECP256R1()))
    other = PopKey(ec.generate_private_key(ec.SECP256R1()))
    token, now, targets = sign_shr(key, "a.b.c", TARGET, ts=TS, nonce="n"), TS, frozenset({TARGET})
    if case == "other cluster":
        targets = frozenset({"b.default.kube-aad-proxy.cluster-connect.local"})
    elif case == "expired":
        now = TS + 300 + 60 + 1
    elif case == "future":
        now = TS - 61
    elif case == "swapped at":
        token = _tamper(token, at="x.y.z")
    elif case == "other key":
        token = _tamper(token, cnf={"jwk": other.jwk})
    elif case == "oversized":
        token = sign_shr(key, "a.b." + "c" * 66 * 1024, TARGET, ts=TS, nonce="n")
    with pytest.raises(TokenInvalid) as info:
        verify_shr(token, targets=targets, now=now, max_age=300, skew=60)
    assert info.value.reason == reason
