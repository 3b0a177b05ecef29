"""Fuzzing the management API of a real relay on loopback (hypothesis).

Random methods, paths (hostile percent-encoded segments), headers, tokens and
bodies (random bytes, random JSON, deep nesting, oversized, near-valid role
assignments and registrations with hostile field values) go over real TLS to
an in-process relay. Properties: no 5xx, every error body is JSON, and the
relay logs no traceback and nothing at ERROR. The relay runs on its own event
loop thread so hypothesis can drive it from a plain test function.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.parse
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs import generate_key_pair
from tests.support.relay import BOB_OID, RelayEnv
from tests.support.waits import WAIT

T = TypeVar("T")
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class _Records(logging.Handler):
    """Every record the relay (and aiohttp's server) logs during the module."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RelayThread:
    """A ``RelayEnv`` served by an event loop on a background thread."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-relay", daemon=True)
        self.thread.start()
        self.env: RelayEnv = self.call(RelayEnv.start(tmp))
        self.tokens = {"admin": self.env.token("admin"), "bob": self.env.token("bob")}
        self.certificate = generate_key_pair("fuzz").certificate_pem.decode()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def close(self) -> None:
        self.call(self.env.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()

    async def _send(self, method: str, path: str, headers: dict[str, str],
                    body: bytes | None) -> tuple[int, str, bytes]:
        url = yarl.URL(self.env.relay.url + path, encoded=True)
        async with self.env.http.request(method, url, data=body, headers=headers) as resp:
            return resp.status, resp.content_type, await resp.read()

    def send(self, method: str, path: str, headers: dict[str, str],
             body: bytes | None) -> tuple[int, str, bytes]:
        return self.call(self._send(method, path, headers, body))


@pytest.fixture(scope="module")
def relay_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayThread]:
    relay = RelayThread(tmp_path_factory.mktemp("fuzz-relay"))
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture(scope="module")
def relay_records() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


_HOSTILE_TEXT = st.sampled_from(["a\n", "\x1b[31m", "\x00", "\u202e", "\u2028", "x" * 300, "", " ",
                                 "../..", "%0A", "a/b", "demo", "rg1", "/", "/resourceGroups/rg1"])
_SEGMENT = (_HOSTILE_TEXT | st.text(max_size=40)).map(lambda s: urllib.parse.quote(s, safe=""))


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A management API path with hostile segments and query values."""
    seg = lambda: draw(_SEGMENT)  # noqa: E731 (a fresh draw per use)
    return draw(st.sampled_from([
        f"/api/v1/resourceGroups/{seg()}/clusters/{seg()}",
        f"/api/v1/resourceGroups/rg1/clusters/{seg()}",
        f"/api/v1/roleAssignments/{seg()}",
        f"/api/v1/clusters?resourceGroup={seg()}",
        f"/api/v1/roleAssignments?principalId={seg()}&scope={seg()}",
        "/api/v1/clusters", "/api/v1/roleAssignments", "/api/v1/resourceGroups/rg1/clusters/alpha",
        f"/api/v1/{seg()}",
    ]))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_FIELD = _JSON | _HOSTILE_TEXT


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    """A request body: none, random bytes, random JSON, deep, huge or near-valid."""
    kind = draw(st.sampled_from(["none", "bytes", "json", "deep", "huge", "assignment", "cluster"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    if kind == "deep":
        return draw(st.sampled_from([b"[", b"{\"a\":", b"[{\"a\":"])) * draw(st.sampled_from([33, 1000, 50_000]))
    if kind == "huge":
        return b'{"pad": "' + b"x" * draw(st.sampled_from([65_000, 70_000, 300_000])) + b'"}'
    if kind == "assignment":
        body = {"principalId": BOB_OID, "principalType": "User", "role": "viewer", "scope": "/resourceGroups/rg1"}
        for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=4)):
            body[key] = draw(_FIELD)
        return json.dumps(body).encode()
    pem = draw(st.sampled_from(["valid", "garbage", "hostile"]))
    cert: Any = {"valid": "VALID", "garbage": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                 "hostile": draw(_FIELD)}[pem]
    cluster = {"agentPublicKeyCertificate": cert, "location": draw(_FIELD), "tlsServerName": draw(_FIELD),
               "servingCaCertificate": draw(_FIELD | st.just(""))}
    return json.dumps(cluster).encode()


_AUTH = st.sampled_from(["admin", "bob", "none", "garbage", "basic", "long"])


@FUZZ
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "POST", "PATCH"]), path=paths(), body=bodies(),
       auth=_AUTH, content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""]))
def test_fuzz_management_api_never_500s_or_logs_a_traceback(
        relay_thread: RelayThread, relay_records: _Records, method: str, path: str,
        body: bytes | None, auth: str, content_type: str) -> None:
    """Any request: a 2xx/4xx with a JSON body (or none), never a 5xx."""
    if body is not None and b"VALID" in body:
        body = body.replace(b'"VALID"', json.dumps(relay_thread.certificate).encode())
    headers = {"Content-Type": content_type} if content_type else {}
    if auth in relay_thread.tokens:
        headers["Authorization"] = f"Bearer {relay_thread.tokens[auth]}"
    elif auth != "none":
        headers["Authorization"] = {"garbage": "Bearer x.y.z", "basic": "Basic YTpi",
                                    "long": "Bearer " + "a" * 20_000}[auth]
    status, ctype, payload = relay_thread.send(method, path, headers, body)
    assert status < 500, (method, path, status, payload[:200])
    if payload and ctype == "application/json" and status >= 400:
        assert "error" in json.loads(payload)
    bad = [r for r in relay_records.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [(r.name, r.getMessage()) for r in bad]
