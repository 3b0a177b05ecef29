"""The login cache's expiry is the access token's: an id token in the same
response may live longer (oidc-provider issues a one-hour id token beside a
short access token), and ``arcctl get-token`` hands out the access token."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from client.token_cache import account_from_token


def _jwt(claims: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def test_expiry_is_the_access_tokens_not_the_id_tokens() -> None:
    now = int(time.time())
    body = {"access_token": _jwt({"sub": "carol", "exp": now + 12}), "expires_in": 12,
            "id_token": _jwt({"sub": "carol", "exp": now + 3600, "preferred_username": "carol@example"})}
    account = account_from_token("https://op.example", "arcctl", body)
    assert account.expires_at == now + 12
    assert account.username == "carol@example" and account.account == "carol"


def test_opaque_access_token_expires_by_expires_in_despite_the_id_token() -> None:
    before = time.time()
    body = {"access_token": "opaque-handle", "expires_in": 60,
            "id_token": _jwt({"sub": "carol", "exp": int(before) + 3600})}
    account = account_from_token("https://op.example", "arcctl", body)
    assert before + 60 <= account.expires_at <= time.time() + 60
