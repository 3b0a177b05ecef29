"""``SandboxApiServer``: TLS listener, CA and serving certificate, admin
credentials and kubeconfig, lifecycle (contract: docs/INTERFACES.md §2)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from certs import CertificateAuthority, IssuedCertificate, server_ssl_context
from sandbox.apiserver.app import App, AuditRecord
from sandbox.apiserver.authn import Authenticator
from sandbox.apiserver.http import MAX_HEAD, serve_connection
from sandbox.apiserver.resources import lookup
from sandbox.apiserver.seed import seed
from sandbox.apiserver.store import Store

log = logging.getLogger("sandbox.apiserver")
SERVING_DNS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local")
SERVING_IPS = ("127.0.0.1", "::1")
_SA = lookup("", "v1", "serviceaccounts")
_SECRETS = lookup("", "v1", "secrets")


class SandboxApiServer:
    """One API server on loopback. ``await start()``, use ``url`` and
    ``admin_kubeconfig_path``, ``await stop()``."""

    def __init__(self, state_dir: str | os.PathLike[str], kube_version: str = "1.33.0",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.kube_version = kube_version
        self.host = host
        self._requested_port = port
        self.port = 0
        self.admin_token = secrets.token_urlsafe(32)
        self.ca: CertificateAuthority | None = None
        self.serving: IssuedCertificate | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.store = Store()
        self.app: App | None = None

    # ---- public attributes ---------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        assert self.ca is not None, "start() first"
        return self.ca.certificate_pem

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca.crt"

    @property
    def admin_kubeconfig_path(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def audit(self) -> list[AuditRecord]:
        """Every request served so far (user, verb, path, status)."""
        return self.app.audit if self.app else []

    def ready_info(self) -> dict[str, Any]:
        """The JSON object the CLI writes to its ready file."""
        return {"url": self.url, "port": self.port, "ca_pem": self.ca_pem.decode(), "ca_file": str(self.ca_file),
                "admin_token": self.admin_token, "admin_kubeconfig_path": str(self.admin_kubeconfig_path),
                "kube_version": self.kube_version, "pid": os.getpid()}

    def issue_client_certificate(self, user: str, groups: list[str] | tuple[str, ...] = ()) -> IssuedCertificate:
        """A client certificate this server accepts (CN user, O groups)."""
        assert self.ca is not None, "start() first"
        return self.ca.issue_client(user, groups)

    # ---- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Create credentials, seed the cluster, listen; returns once serving."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority.create("sandbox-apiserver-ca")
        self.serving = self.ca.issue_server(SERVING_DNS, SERVING_IPS, common_name="kube-apiserver")
        authn = Authenticator(self.admin_token, self._sa_uid, self._secret_exists)
        ssl_ctx = server_ssl_context(self.serving, client_ca_pem=self.ca.certificate_pem, alpn=["http/1.1"])
        self._server = await asyncio.start_server(self._on_connection, self.host, self._requested_port,
                                                  ssl=ssl_ctx, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        self.app = App(self.store, authn, self.kube_version, self.ca.certificate_pem, f"{self.host}:{self.port}")
        seed(self.store, self.kube_version)
        self._write_files()
        log.info("event=apiserver_started url=%s version=%s", self.url, self.kube_version)

    async def stop(self) -> None:
        """Stop listening, end watches and connections, stop pod runtimes."""
        if self._server is not None:
            self._server.close()
        self.store.close_watchers()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self.app is not None:
            self.app.controllers.stop()
        log.info("event=apiserver_stopped url=%s", self.url)

    async def __aenter__(self) -> SandboxApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- internals -----------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self.app is not None
        self._conns.add(task)
        try:
            await serve_connection(reader, writer, self.app.handle)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("event=connection_failed")
        finally:
            self._conns.discard(task)

    def _sa_uid(self, namespace: str, name: str) -> str | None:
        assert _SA is not None
        sa = self.store.peek(_SA, namespace, name)
        return sa["metadata"]["uid"] if sa else None

    def _secret_exists(self, namespace: str, name: str) -> bool:
        assert _SECRETS is not None
        return self.store.peek(_SECRETS, namespace, name) is not None

    def kubeconfig(self, user: dict[str, Any], *, server: str | None = None) -> dict[str, Any]:
        """A kubeconfig for this cluster with the given ``users[].user`` entry."""
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            # CA embedded so the file stays valid when copied elsewhere.
            "clusters": [{"name": "sandbox", "cluster": {
                "server": server or self.url,
                "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}}],
            "users": [{"name": "sandbox-user", "user": user}],
            "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox-user",
                                                          "namespace": "default"}}],
            "current-context": "sandbox",
        }

    def write_kubeconfig(self, path: str | os.PathLike[str], user: dict[str, Any]) -> Path:
        """Write a kubeconfig (mode 0600) for ``user``, e.g. ``{"token": t}`` or
        ``{"client-certificate": f, "client-key": k}``; returns the path."""
        out = Path(path)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.kubeconfig(user), f)
        return out

    def _write_files(self) -> None:
        self.ca_file.write_bytes(self.ca_pem)
        self.write_kubeconfig(self.admin_kubeconfig_path, {"token": self.admin_token})
