"""Merge a cluster/user/context into a kubeconfig the way kubectl would.

Same-name entries are replaced, everything else is kept; the file is written
atomically (temp file + rename) with mode 0600 because it may hold a token.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from certs import write_secret_file
from client.errors import CliError, ConfigError

__all__ = [
    "KubeconfigEntry",
    "cluster_address",
    "default_kubeconfig_path",
    "dump",
    "exec_user",
    "load",
    "merge",
    "proxy_server_host",
    "restore_current_context",
    "token_user",
    "write_atomic",
]


def default_kubeconfig_path() -> Path:
    """The file kubectl would write to.

    kubectl (client-go ``GetDefaultFilename``) uses ``$KUBECONFIG`` when set: the
    only entry, else the first entry that exists, else the last entry; without
    it, ``~/.kube/config``.
    """
    env = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if len(paths) == 1:
        return paths[0]
    for p in paths:
        if p.exists():
            return p
    if paths:
        return paths[-1]
    return Path.home() / ".kube" / "config"


@dataclass(frozen=True)
class KubeconfigEntry:
    """One cluster as arc-proxy serves it."""

    context: str
    server: str
    ca_pem: bytes
    tls_server_name: str | None
    user: dict[str, Any]
    # kubeconfig ``proxy-url`` (arc-proxy as kubectl's CONNECT proxy), or None
    # for the direct shape (``server`` is arc-proxy's own port).
    proxy_url: str | None = None

    @property
    def cluster_name(self) -> str:
        return self.context

    @property
    def user_name(self) -> str:
        return f"arc-user-{self.context}"


# Hosts under .invalid (RFC 6761) never resolve, so a proxy-url kubeconfig's
# server cannot reach anything but through arc-proxy.
PROXY_SERVER_DOMAIN = "arc-proxy.invalid"


def proxy_server_host(resource_group: str, name: str) -> str:
    """The stable, never-resolving host naming a cluster in a proxy-url kubeconfig
    (``<name>.<group>.arc-proxy.invalid``); TLS still verifies ``tls-server-name``."""
    def label(part: str) -> str:
        return "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "-"
                       for c in part.lower()).strip(".-") or "x"
    return f"{label(name)}.{label(resource_group)}.{PROXY_SERVER_DOMAIN}"


def cluster_address(mode: str, cluster_id: str, proxy_host: str, port: int,
                    tls_server_name: str | None, *, explicit: bool = True) -> tuple[str, str | None]:
    """The cluster entry's ``server`` and ``proxy-url`` for arc-proxy on ``port``.

    Args:
        mode: ``proxy-url`` (server ``https://<proxy_host>``, proxy-url
            ``http://127.0.0.1:PORT``) or ``direct`` (server ``https://127.0.0.1:PORT``).
        cluster_id: ``<group>/<name>``, for the error.
        proxy_host: :func:`proxy_server_host` of the cluster.
        port: arc-proxy's bound port.
        tls_server_name: the registration's ``tlsServerName``. The proxy-url
            shape needs it: without it kubectl would check the serving
            certificate against the never-resolving host.
        explicit: the user asked for ``mode``; a default proxy-url without a
            server name falls back to direct instead of failing.

    Returns:
        ``(server, proxy_url)``; ``proxy_url`` is None in the direct shape.

    Raises:
        CliError: proxy-url asked for explicitly, but there is no server name.
    """
    if mode == "proxy-url" and tls_server_name:
        return f"https://{proxy_host}", f"http://127.0.0.1:{port}"
    if mode == "proxy-url" and explicit:
        raise CliError(f"cluster {cluster_id} has no tlsServerName in its registration, which "
                       "--kubeconfig-mode proxy-url needs: re-register it, or use "
                       "--kubeconfig-mode direct")
    return f"https://127.0.0.1:{port}", None


def token_user(token: str) -> dict[str, Any]:
    """A kubeconfig ``user`` with a static bearer token (``--token``)."""
    return {"token": token}


def exec_user(command: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """A kubeconfig ``user`` that runs a client-go exec credential plugin
    (``arcctl get-token``) so kubectl always gets a fresh token."""
    spec: dict[str, Any] = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": command,
        "args": args,
        "interactiveMode": "Never",
        "provideClusterInfo": False,
    }
    if env:
        spec["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    return {"exec": spec}


def load(path: Path) -> dict[str, Any]:
    """Read a kubeconfig; a missing or empty file is an empty ``Config``.

    Raises:
        ConfigError: the file is not a YAML mapping.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise ConfigError(f"cannot read kubeconfig {path}: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"kubeconfig {path} is not valid YAML: fix it or use --file") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a kubeconfig mapping: fix it or use --file")
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Config")
    for key in ("clusters", "users", "contexts"):
        if doc.get(key) is None:
            doc[key] = []
    doc.setdefault("preferences", {})
    return doc


def _put(items: list[object], name: str, key: str, value: dict[str, Any]) -> None:
    # Replace in place so the order of the user's entries is preserved.
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == name:
            items[i] = {"name": name, key: value}
            return
    items.append({"name": name, key: value})


def merge(doc: dict[str, Any], entry: KubeconfigEntry, *, make_current: bool = True) -> str | None:
    """Put ``entry``'s cluster, user and context into ``doc``.

    Args:
        doc: a kubeconfig as returned by :func:`load` (modified in place).
        entry: what to add.
        make_current: set ``current-context`` to the entry's context.

    Returns:
        The previous ``current-context`` (``None`` if there was none).
    """
    cluster: dict[str, Any] = {
        "server": entry.server,
        "certificate-authority-data": base64.b64encode(entry.ca_pem).decode(),
    }
    if entry.tls_server_name:
        cluster["tls-server-name"] = entry.tls_server_name
    if entry.proxy_url:
        cluster["proxy-url"] = entry.proxy_url
    _put(doc["clusters"], entry.cluster_name, "cluster", cluster)
    _put(doc["users"], entry.user_name, "user", entry.user)
    _put(doc["contexts"], entry.context, "context",
         {"cluster": entry.cluster_name, "user": entry.user_name})
    previous = doc.get("current-context") or None
    if make_current:
        doc["current-context"] = entry.context
    return previous


def dump(doc: dict[str, Any]) -> str:
    """The kubeconfig as YAML text."""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` via a temp file in the same directory and a
    rename, so kubectl never reads a half-written file; mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret_file(path, dump(doc))


def restore_current_context(path: Path, ours: str, previous: str | None) -> bool:
    """On exit: if ``current-context`` still names our context, put back the one
    that was current before (or unset it). Entries stay so the context can be
    reused by the next ``arc-proxy`` run.

    Returns:
        Whether the file was changed.
    """
    try:
        doc = load(path)
    except ConfigError:
        return False
    if doc.get("current-context") != ours:
        return False
    if previous:
        doc["current-context"] = previous
    else:
        doc.pop("current-context", None)
    write_atomic(path, doc)
    return True
