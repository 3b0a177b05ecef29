"""Shared pieces of the identity end-to-end tests (attack and positive suites).

Each suite runs its own ``DemoEnvironment`` (module scope): both change role
assignments and RBAC, which other e2e modules must not see. Tokens are forged
in the test process with the sandbox issuer's own signing keys (the running
issuer and :class:`Forge` read the same key file), so attack tokens can be
shaped at will and legitimate ones are indistinguishable from the issuer's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from demo import DemoEnvironment
from sandbox.idp.keys import SigningKeys
from sandbox.idp.tokens import TokenMinter
from sandbox.idp.users import load_directory

AUDIENCE = "api://cluster-connect"
AGENT_SA = "system:serviceaccount:cluster-connect:arc-agent"
# Bound for anything asynchronous in these tests (never a timed assertion).
WAIT = 30.0


@contextmanager
def demo(state: Path, *, require_pop: bool = False, relay_audience: bool = False) -> Iterator[DemoEnvironment]:
    """A fresh demo (API server, issuer, relay, agent) in ``state``; the token
    cache of ``arcctl get-token`` is kept in ``state`` too. The identity suites
    send one forged token to both relay and cluster, so by default the relay
    accepts the clusters' audience, as a config without the split does
    (``relay_audience``: the relay's own, as the demo ships)."""
    old_cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(state / "cache")
    # The identity suites send forged bare bearer tokens of many users through
    # kubectl, which require_pop would refuse (PoP itself: tests/e2e/test_pop.py).
    env = DemoEnvironment(state / "state", client_config_path=state / "client-config.yaml",
                          require_pop=require_pop, relay_audience=relay_audience)
    try:
        try:
            env.start()
        except BaseException:
            logs = "\n".join(f"--- {p.name}:\n{p.read_text()[-2000:]}" for p in env.logs.glob("*.log"))
            raise AssertionError(f"demo did not start; logs:\n{logs}") from None
        yield env
    finally:
        env.stop()
        if old_cache is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old_cache


class Forge:
    """Mints tokens exactly as the running sandbox issuer would (same keys,
    same ``iss``), plus attack variants through :meth:`raw`."""

    def __init__(self, env: DemoEnvironment) -> None:
        self.directory = load_directory(None)
        keys = SigningKeys(env.dir / "idp" / "idp-signing-keys.json")
        self.minter = TokenMinter(self.directory, keys, str(env.idp["issuer"]), str(env.idp["url"]),
                                  env.identity.client_id)
        self.issuer = str(env.idp["issuer"])
        self.tenant_id = self.directory.tenant_id

    def claims(self, user: str, lifetime: int = 3600, **overrides: Any) -> dict[str, Any]:
        """A user's (or service principal's) access-token claims; None removes one."""
        who = self.directory.find_user(user)
        if who is not None:
            claims = self.minter.user_claims(who, AUDIENCE, lifetime)
        else:
            app = self.directory.find_app(user)
            assert app is not None, user
            claims = self.minter.app_claims(app, AUDIENCE, lifetime)
        for k, v in overrides.items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        return claims

    def token(self, user: str, lifetime: int = 3600, **overrides: Any) -> str:
        """A valid signed token (unless ``overrides`` break it)."""
        return self.minter.sign(self.claims(user, lifetime, **overrides))

    def raw(self, claims: dict[str, Any], **kw: Any) -> str:
        """Sign anything: ``headers=``, ``key=``, ``algorithm=`` as TokenMinter.sign."""
        return self.minter.sign(dict(claims), **kw)

    def oid(self, user: str) -> str:
        who = self.directory.find_user(user)
        assert who is not None, user
        return who.oid

    def group_id(self, name: str) -> str:
        """The id of a named group of the built-in directory (developers, viewers, ...)."""
        return self.directory.groups[name]

    def groups_of(self, user: str) -> tuple[str, ...]:
        groups = self.directory.groups_of(self.oid(user))
        assert groups is not None
        return groups

    @property
    def public_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.minter.keys.current.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- the sandbox API server's audit trail (GET /debug/audit, admin only) --------------

def audit(env: DemoEnvironment) -> list[dict[str, Any]]:
    """Every request the sandbox API server has served so far."""
    return list(env.sandbox_admin().call("GET", "/debug/audit").get("items", []))


def audit_since(env: DemoEnvironment, mark: int) -> list[dict[str, Any]]:
    """Requests after ``mark`` (a previous ``len(audit(env))``), leaving out the
    static admin (the test's own reads) and the agent's metadata reports."""
    return [r for r in audit(env)[mark:]
            if r["user"] != "admin" and not (r["user"] == AGENT_SA and not r["impersonatedBy"])]


# -- kubeconfigs and raw HTTP through arc-proxy --------------------------------------

def cluster_of(kubeconfig: Path) -> dict[str, Any]:
    """The ``cluster`` entry arc-proxy wrote (server, CA data, tls-server-name)."""
    doc = yaml.safe_load(kubeconfig.read_text())
    current = doc["current-context"]
    ctx = next(c["context"] for c in doc["contexts"] if c["name"] == current)
    return dict(next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"]))


def token_kubeconfig(proxy_kubeconfig: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the proxy's cluster whose user is a static bearer ``token``."""
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": cluster_of(proxy_kubeconfig)}],
           "users": [{"name": "u", "user": {"token": token}}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@dataclass
class RawResponse:
    status: int
    head: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


def raw_request(proxy_kubeconfig: Path, head: bytes, timeout: float = 15.0) -> RawResponse:
    """Send one hand-written HTTP/1.1 request head through arc-proxy (TLS to
    kube-aad-proxy with the cluster's CA) and read the response (the head must
    say ``Connection: close``). With a ``proxy-url`` in the kubeconfig (arc-proxy's
    default shape) the TLS runs inside a CONNECT to it, as kubectl's does."""
    cluster = cluster_of(proxy_kubeconfig)
    ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    chunks = []
    with _connect(cluster, timeout) as sock, \
            ctx.wrap_socket(sock, server_hostname=cluster["tls-server-name"]) as tls:
        tls.sendall(head)
        while True:
            try:
                data = tls.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head_part, _, body = raw.partition(b"\r\n\r\n")
    text = head_part.decode("latin-1")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    if "transfer-encoding: chunked" in text.lower():
        body = _unchunk(body)
    return RawResponse(status, text, body)


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname, url
    return parsed.hostname, parsed.port or default_port


def _connect(cluster: dict[str, Any], timeout: float) -> socket.socket:
    """A TCP connection that carries bytes to the kubeconfig cluster's server:
    straight to ``server``, or through ``proxy-url`` with an HTTP CONNECT."""
    server = _host_port(str(cluster["server"]), 443)
    proxy = cluster.get("proxy-url")
    if not proxy:
        return socket.create_connection(server, timeout=timeout)
    sock = socket.create_connection(_host_port(str(proxy), 80), timeout=timeout)
    authority = f"{server[0]}:{server[1]}"
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):  # byte by byte: TLS bytes must stay unread
        byte = sock.recv(1)
        if not byte:
            break
        answer += byte
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    if status_line.split(" ")[1:2] != ["200"]:
        sock.close()
        raise AssertionError(f"arc-proxy refused the CONNECT: {status_line!r}")
    return sock


def _unchunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


def get_head(path: str, *headers: str) -> bytes:
    """``GET path`` with ``headers`` (``"Name: value"``), Connection: close."""
    lines = [f"GET {path} HTTP/1.1", "Host: kubernetes", "Accept: application/json", *headers,
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def whoami_head(token: str | None, *headers: str) -> bytes:
    """``POST`` a SelfSubjectReview (``kubectl auth whoami``) by hand."""
    body = b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}'
    lines = ["POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1", "Host: kubernetes",
             "Content-Type: application/json", "Accept: application/json",
             f"Content-Length: {len(body)}", *headers]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


# -- the relay ------------------------------------------------------------------------

def relay_status(env: DemoEnvironment, path: str, token: str | None) -> int:
    """HTTP status of ``GET path`` at the relay with ``Authorization: Bearer token``."""
    ctx = ssl.create_default_context(cafile=str(env.dir / "relay" / "ca.crt"))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(env.relay_url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def relay_metric(env: DemoEnvironment, name: str) -> float:
    """One sample of the relay's /metrics on its health listener (0 when absent);
    the listener's address is the last one the relay logged."""
    found = re.findall(r"relay health listener url=(http://\S+)", (env.logs / "relay.log").read_text(errors="replace"))
    assert found, "the relay logged no health listener address"
    with urllib.request.urlopen(found[-1] + "/metrics", timeout=15) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


# -- arc-proxy with its stderr visible ---------------------------------------------------

def agent_log_count(env: DemoEnvironment, needle: str) -> int:
    """Lines of the agent's log containing ``needle``."""
    path = env.logs / "agent.log"
    return sum(needle in line for line in path.read_text(errors="replace").splitlines())
