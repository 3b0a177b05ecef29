"""Issue 12 items 1, 2 and 4 against a real relay on loopback: names with a
trailing newline or control characters, malformed bodies from a principal
without a role, bodies in pieces and over the limit, unexpected errors, and an
agent reporting hostile metadata."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

from agent.connector import Connector, ConnectorConfig
from certs import generate_key_pair
from relay import names
from relay.json_body import MAX_BODY_BYTES, MAX_BODY_DEPTH, nesting_exceeds, read_json_object
from relay.roles import assignment_errors
from tests.support.relay import BOB_OID, RelayEnv, running_env
from tests.support.waits import WAIT, until_async

CLUSTERS = "/api/v1/resourceGroups/{rg}/clusters/{name}"



def _registration() -> dict[str, str]:
    return {"location": "westeurope",
            "agentPublicKeyCertificate": generate_key_pair("alpha").certificate_pem.decode(),
            "tlsServerName": "kube-aad-proxy.alpha"}


def _assignment(**fields: Any) -> dict[str, Any]:
    return {"principalId": BOB_OID, "principalType": "User", "role": "viewer", "scope": "/", **fields}


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text


# -- item 1: fullmatch and no control characters ---------------------------------------------

@pytest.mark.parametrize("value", ["acc-nl\n", "acc\r", "a\x1b[31m", "a\x00", "a b", "a/b", "", "-a",
                                   "a" * 64, "acc\u2028", "\u202eacc"])
def test_names_refuse_trailing_newline_and_control_characters(value: str) -> None:
    """Names, ids and scopes are checked with fullmatch over a closed alphabet."""
    assert not names.valid_name(value)
    assert not names.valid_assignment_id(value if value != "a" * 64 else "a" * 129)
    assert not names.valid_scope(f"/resourceGroups/{value}")
    assert not names.valid_scope(f"/resourceGroups/rg/clusters/{value}")


def test_names_accept_the_documented_shapes() -> None:
    """The valid forms still pass (the checks are not just 'refuse everything')."""
    assert names.valid_name("rg-1.a_b") and names.valid_name("a" * 63)
    assert names.valid_assignment_id("a" * 128) and not names.valid_assignment_id("a" * 129)
    for scope in ("/", "/resourceGroups/rg1", "/resourceGroups/rg1/clusters/alpha"):
        assert names.valid_scope(scope)
    for scope in ("/\n", "//", "/resourceGroups/rg1/", "/resourceGroups/rg1/clusters/a\n"):
        assert not names.valid_scope(scope)
    assert names.valid_principal_id(BOB_OID) and names.valid_principal_id("bob@contoso.example")
    for principal in ("", "a\n", "a b", "\x1b]0;x\x07", "a\u202e", "x" * 257, 7, None, ["a"]):
        assert not names.valid_principal_id(principal)


async def test_api_refuses_control_characters_in_path_names(relay_env: RelayEnv) -> None:
    """Every path parameter with a trailing newline or a control character is a
    400 InvalidName for PUT, GET and DELETE, and nothing is stored."""
    admin = relay_env.token("admin")
    for rg, name in (("rg1", "acc-nl%0A"), ("rg1%0A", "acc"), ("rg1", "a%1B%5B31m"), ("rg1", "a%0D"),
                     ("rg1", "a%E2%80%A8"), ("rg1", "a%00")):
        path = CLUSTERS.format(rg=rg, name=name)
        for method in ("PUT", "GET", "DELETE"):
            status, body = await relay_env.api(method, path, admin, _registration() if method == "PUT" else None)
            assert status == 400 and body["error"]["code"] == "InvalidName", (method, path, body)
    assert await relay_env.state.registry.list(None) == []
    status, body = await relay_env.api("GET", "/api/v1/clusters?resourceGroup=rg1%0A", admin)
    assert status == 400 and body["error"]["code"] == "InvalidName"
    for aid in ("acc-nl%0A", "a%1B", "a%09"):
        for method in ("PUT", "GET", "DELETE"):
            status, body = await relay_env.api(method, f"/api/v1/roleAssignments/{aid}", admin,
                                               _assignment() if method == "PUT" else None)
            assert status == 400 and body["error"]["code"] == "InvalidName", (method, aid, body)
    assert await relay_env.state.roles.list_all() == []


async def test_api_refuses_control_characters_in_assignment_bodies(relay_env: RelayEnv) -> None:
    """A scope or principal id with a newline, ESC, bidi override or whitespace
    is a 400; a clean one is a 201 (the same admin, the same route)."""
    admin = relay_env.token("admin")
    for bad in ({"scope": "/resourceGroups/rg1\n"}, {"scope": "/\n"},
                {"scope": "/resourceGroups/rg1/clusters/a\x1b"},
                {"principalId": BOB_OID + "\n"}, {"principalId": "\x1b]0;pwned\x07"},
                {"principalId": "bob \u202e"}, {"principalId": "x" * 300}):
        status, body = await relay_env.api("PUT", "/api/v1/roleAssignments/a1", admin, _assignment(**bad))
        assert status == 400 and body["error"]["code"] == "InvalidRequest", (bad, body)
    assert await relay_env.state.roles.list_all() == []
    status, _ = await relay_env.api("PUT", "/api/v1/roleAssignments/a1", admin, _assignment())
    assert status == 201


async def test_api_refuses_control_characters_in_cluster_fields(relay_env: RelayEnv) -> None:
    """location and tlsServerName are shown in tables: no control characters."""
    admin = relay_env.token("admin")
    path = CLUSTERS.format(rg="rg1", name="alpha")
    for bad in ({"location": "west\neurope"}, {"location": "x" * 91}, {"tlsServerName": "a\x1b.b"},
                {"tlsServerName": "a b"}, {"location": 3}):
        status, body = await relay_env.api("PUT", path, admin, {**_registration(), **bad})
        assert status == 400 and body["error"]["code"] == "InvalidRequest", (bad, body)
    status, _ = await relay_env.api("PUT", path, admin, _registration())
    assert status == 201


# -- item 2: parse bounded, types strict, no traceback ---------------------------------------

async def _raw_api(env: RelayEnv, method: str, path: str, token: str, data: Any,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})}
    async with env.http.request(method, env.relay.url + path, data=data, headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_api_no_role_malformed_bodies_are_400_one_line(
        relay_env: RelayEnv, caplog: pytest.LogCaptureFixture) -> None:
    """A principal without any role sends 50,000 nested '[', a list as role, a
    dict as principalType, non-UTF-8 and NaN: each is a 400 with one line, and
    the relay logs no traceback and nothing at ERROR."""
    caplog.set_level(logging.DEBUG)
    bob = relay_env.token("bob")
    path = "/api/v1/roleAssignments/x1"
    bodies: list[bytes] = [
        b"[" * 50_000, b'{"a":' * 40 + b"1" + b"}" * 40, json.dumps(_assignment(role=["admin"])).encode(),
        json.dumps(_assignment(principalType={"a": 1})).encode(),
        json.dumps(_assignment(scope=["/"])).encode(), b"\xff\xfe{}", b'{"principalId": NaN}',
        b'{"n": ' + b"9" * 5000 + b"}", b"[]", b"{",
    ]
    for data in bodies:
        status, body = await _raw_api(relay_env, "PUT", path, bob, data)
        assert status == 400, (data[:40], body)
        assert "\n" not in body["error"]["message"]
    # Cluster routes authorize on the path before reading a byte of the body.
    status, body = await _raw_api(relay_env, "PUT", CLUSTERS.format(rg="rg1", name="alpha"), bob,
                                  b"[" * 50_000)
    assert status == 403 and body["error"]["code"] == "Forbidden"
    _no_tracebacks(caplog)


async def test_api_well_typed_assignment_without_role_is_403(relay_env: RelayEnv) -> None:
    """Validation comes first, then authorization: a well-formed body from bob is a 403."""
    status, body = await relay_env.api("PUT", "/api/v1/roleAssignments/x1", relay_env.token("bob"),
                                       _assignment())
    assert status == 403 and body["error"]["code"] == "Forbidden"


def test_body_nesting_scan_ignores_brackets_in_strings() -> None:
    """The depth scan counts only structural brackets."""
    assert nesting_exceeds(b"[" * (MAX_BODY_DEPTH + 1), MAX_BODY_DEPTH)
    assert not nesting_exceeds(b"[" * MAX_BODY_DEPTH + b"]" * MAX_BODY_DEPTH, MAX_BODY_DEPTH)
    assert not nesting_exceeds(json.dumps({"a": "[" * 1000 + '\\"[' * 100}).encode(), MAX_BODY_DEPTH)


async def test_body_reader_joins_pieces_until_eof() -> None:
    """The body reader reads until EOF: a first piece alone is not the body
    (the old reader parsed whatever had arrived and said 'not valid JSON')."""
    body = json.dumps({"principalId": "p" * 30_000}).encode()
    payload = streams.StreamReader(mock.Mock(), 2**16, loop=asyncio.get_running_loop())
    request = make_mocked_request("PUT", "/x", headers={"Content-Type": "application/json"},
                                  payload=payload)
    payload.feed_data(body[:1000])
    reading = asyncio.ensure_future(read_json_object(request))
    for _ in range(20):  # let the reader take the first piece; it must wait for more
        await asyncio.sleep(0)
    assert not reading.done()
    payload.feed_data(body[1000:])
    payload.feed_eof()
    assert (await reading)["principalId"] == "p" * 30_000


async def test_api_reads_body_sent_in_two_tls_writes(relay_env: RelayEnv) -> None:
    """A valid 30 KB body written in two pieces on a raw TLS socket is accepted."""
    admin = relay_env.token("admin")
    body = json.dumps(_assignment(principalId="p" * 200, pad="x" * 30_000)).encode()
    ctx = ssl.create_default_context(cadata=relay_env.relay.ca_pem.decode())  # type: ignore[union-attr]
    host, port = "127.0.0.1", int(relay_env.relay.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
    try:
        writer.write((f"PUT /api/v1/roleAssignments/pieces HTTP/1.1\r\nHost: localhost\r\n"
                      f"Authorization: Bearer {admin}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body[:700])
        await writer.drain()
        writer.write(body[700:])
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 201"), response[:200]


async def test_api_over_limit_body_is_413(relay_env: RelayEnv) -> None:
    """Over 64 KiB, announced or chunked, is a 413 PayloadTooLarge."""
    admin = relay_env.token("admin")
    big = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, body = await _raw_api(relay_env, "PUT", "/api/v1/roleAssignments/big", admin, big)
    assert status == 413 and body["error"]["code"] == "PayloadTooLarge"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]
    status, body = await _raw_api(relay_env, "PUT", "/api/v1/roleAssignments/big", admin, chunks())
    assert status == 413 and body["error"]["code"] == "PayloadTooLarge"


async def test_unexpected_error_is_500_with_request_id_and_one_error_line(
        relay_env: RelayEnv, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a handler: 500 with a request id and no exception text; one
    ERROR line with the type; the traceback only at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="relay")

    async def broken(_cid: str) -> None:
        raise RuntimeError("secret detail")
    monkeypatch.setattr(relay_env.state.registry, "get", broken)
    status, body = await relay_env.api("GET", CLUSTERS.format(rg="rg1", name="alpha"), relay_env.token("admin"))
    assert status == 500 and body["error"]["code"] == "InternalError"
    assert "secret detail" not in json.dumps(body)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and not errors[0].exc_info
    message = errors[0].getMessage()
    assert "RuntimeError" in message and "secret detail" not in message
    request_id = body["error"]["message"].split("request id ")[1].split()[0]
    assert request_id in message
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(debug) == 1 and request_id in debug[0].getMessage()


# -- item 4: agent metadata -----------------------------------------------------------------

def test_agent_metadata_validator_keeps_only_clean_fields() -> None:
    """Types, lengths and charset are checked; problems never quote the value."""
    clean, problems = names.validate_agent_metadata({
        "agentVersion": "1.0\n2026-01-01 INFO relay agent connected cluster=evil",
        "kubernetesVersion": "v1.33.0+k3s1", "totalNodeCount": True, "totalCoreCount": 8,
        "extra": "\x1b]0;x\x07", "other": 1,
    })
    assert clean == {"kubernetesVersion": "v1.33.0+k3s1", "totalCoreCount": 8}
    assert len(problems) == 3 and not any("\n" in p or "\x1b" in p or "evil" in p for p in problems)
    clean, problems = names.validate_agent_metadata({"agentVersion": "x" * 65, "totalNodeCount": -1,
                                                     "kubernetesVersion": 1.5, "totalCoreCount": 10**12})
    assert clean == {} and len(problems) == 4


async def test_agent_hostile_metadata_is_neither_stored_nor_logged_raw(
        relay_env: RelayEnv, caplog: pytest.LogCaptureFixture) -> None:
    """An authenticated agent reports a forged log line, ESC/OSC sequences and
    5,000 characters: the relay stores only the clean field and no log record
    carries a control character."""
    caplog.set_level(logging.INFO)
    keys = await relay_env.register("rg1", "alpha")
    forged = "1.0\n2026-12-03 INFO relay cluster registered id=rg1/x principal=admin\x1b]0;pwned\x07"

    async def hostile() -> dict[str, Any]:
        return {"agentVersion": forged, "kubernetesVersion": "k" * 5000, "totalNodeCount": 3,
                "totalCoreCount": "\x1b[2J"}
    connector = Connector(ConnectorConfig(relay_url=relay_env.relay.url, cluster_id="rg1/alpha",
                                          private_key_pem=keys.private_key_pem, upstream=("127.0.0.1", 9),
                                          relay_ca_pem=relay_env.relay.ca_pem), metadata=hostile)
    relay_env.connectors.append((connector, asyncio.ensure_future(connector.run())))
    registry = relay_env.state.registry
    async def node_count() -> bool:
        return bool((await registry.get("rg1/alpha")).total_node_count == 3)
    await until_async(node_count, "the agent's node count")
    cluster = await registry.get("rg1/alpha")
    assert cluster.total_node_count == 3
    assert cluster.agent_version is None and cluster.kubernetes_version is None
    assert cluster.total_core_count is None
    for record in caplog.records:
        text = record.getMessage()
        assert "\n" not in text and "\x1b" not in text and "\x07" not in text, text
    assert any("agent metadata refused" in r.getMessage() for r in caplog.records)
    assert assignment_errors({"principalId": "a", "role": ["admin"], "scope": "/"})


async def test_overlong_header_is_400_and_one_line_without_the_token(
        relay_env: RelayEnv, caplog: pytest.LogCaptureFixture) -> None:
    """A 20 KB Authorization header: aiohttp answers 400; the relay logs one
    INFO line naming the parser error, no traceback and no token bytes."""
    caplog.set_level(logging.INFO)
    secret = "S3CRET" + "a" * 20_000
    async with relay_env.http.get(relay_env.relay.url + "/api/v1/clusters",
                                  headers={"Authorization": f"Bearer {secret}"}) as resp:
        assert resp.status == 400
    _no_tracebacks(caplog)
    refused = [r.getMessage() for r in caplog.records if "refused by the parser" in r.getMessage()]
    assert len(refused) == 1 and "LineTooLong" in refused[0]
    assert "S3CRET" not in caplog.text


async def test_api_body_limits_follow_the_config(tmp_path: Path) -> None:
    """limits.api_max_body_bytes / api_max_body_depth: a body over the configured
    size is 413, deeper than the configured depth is 400, within both is 201."""
    async with running_env(tmp_path, api_max_body_bytes=600, api_max_body_depth=2) as env:
        admin = env.token("admin")
        path = "/api/v1/roleAssignments/cfg"
        status, body = await env.api("PUT", path, admin, _assignment(pad="x" * 600))
        assert status == 413 and body["error"]["code"] == "PayloadTooLarge"
        status, body = await env.api("PUT", path, admin, _assignment(pad=[[1]]))
        assert status == 400 and "deeper than 2" in body["error"]["message"]
        status, _ = await env.api("PUT", path, admin, _assignment(pad=[1]))
        assert status == 201


def test_relay_config_refuses_non_positive_body_limits() -> None:
    """A zero or negative body limit is a one-line ConfigError."""
    from relay.config import ConfigError, relay_config_from_dict

    assert relay_config_from_dict({"limits": {"api_max_body_bytes": 1000}}).api_max_body_bytes == 1000
    with pytest.raises(ConfigError, match=r"limits\.api_max_body_depth: expected a whole number >= 1, got 0"):
        relay_config_from_dict({"limits": {"api_max_body_depth": 0}})
