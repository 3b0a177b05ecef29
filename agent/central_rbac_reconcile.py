"""Make the cluster's owned central-RBAC objects match a list (issue 18).

Reads every object carrying ``OWNED_LABEL`` (three list calls), creates what
is missing, replaces what differs and deletes what nobody wants any more,
with the agent's own credentials. Objects without the label are never
touched. A failure (an API server error, a namespace that does not exist) is
logged once per cause; agent/central_rbac.py retries with backoff and at
each new list.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from agent.central_rbac_objects import OWNED_LABEL, OWNED_VALUE, RBAC_API
from certs import client_ssl_context

log = logging.getLogger("agent")

# The API server answers RBAC calls quickly; a stuck one must not hold the
# reconciler (the next list retries).
CALL_TIMEOUT = 10.0
_PLURAL = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
           "RoleBinding": "rolebindings"}
Key = tuple[str, str, str]


def _path(kind: str, namespace: str, name: str = "") -> str:
    base = f"/apis/{RBAC_API}"
    where = f"{base}/namespaces/{namespace}/{_PLURAL[kind]}" if namespace else f"{base}/{_PLURAL[kind]}"
    return f"{where}/{name}" if name else where


def _same(want: dict[str, Any], have: dict[str, Any]) -> bool:
    fields = ("rules",) if want["kind"] == "ClusterRole" else ("roleRef", "subjects")
    meta_w, meta_h = want["metadata"], have.get("metadata") or {}
    return all(want.get(f) == have.get(f) for f in fields) and all(
        (meta_h.get(m) or {}).get(k) == v for m in ("labels", "annotations") for k, v in (meta_w.get(m) or {}).items())


class Reconciler:
    """Applies desired object sets to one API server.

    Args:
        upstream_url: the API server, ``https://host:port``.
        ca_pem: its CA.
        token: the agent's bearer token (needs RBAC write on the three kinds).
    """

    def __init__(self, upstream_url: str, ca_pem: bytes | None, token: str | None) -> None:
        self.base = upstream_url.rstrip("/")
        self.ssl = client_ssl_context(ca_pem or None)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.changes = 0
        self._last_error = ""

    async def apply(self, desired: dict[Key, dict[str, Any]]) -> bool:
        """Make the owned objects exactly ``desired``; True when every call worked."""
        ok = True
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as http:
            try:
                have = await self._owned(http)
            except (aiohttp.ClientError, TimeoutError, _CallFailed) as exc:
                self._failed(f"cannot list owned objects: {_why(exc)}")
                return False
            # Deletions last would leave a revoked binding longer; first is safe
            # because kube-aad-proxy already stopped adding the group.
            for key in sorted(set(have) - set(desired)):
                ok &= await self._call(http, "DELETE", _path(*key), None, key)
            for key, want in desired.items():
                found = have.get(key)
                if found is None:
                    ok &= await self._call(http, "POST", _path(key[0], key[1]), want, key)
                elif not _same(want, found):
                    body = {**want, "metadata": {**want["metadata"],
                                                 "resourceVersion": found["metadata"].get("resourceVersion")}}
                    ok &= await self._call(http, "PUT", _path(*key), body, key)
        if ok:
            self._last_error = ""
        return ok

    async def _owned(self, http: aiohttp.ClientSession) -> dict[Key, dict[str, Any]]:
        found: dict[Key, dict[str, Any]] = {}
        for kind in _PLURAL:
            url = self.base + _path(kind, "")
            async with http.get(url, params={"labelSelector": f"{OWNED_LABEL}={OWNED_VALUE}"}, ssl=self.ssl) as resp:
                if resp.status != 200:
                    raise _CallFailed(f"list {_PLURAL[kind]} answered {resp.status}")
                page = await resp.json()
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                item.setdefault("kind", kind)
                found[(kind, meta.get("namespace") or "", meta.get("name") or "")] = item
        return found

    async def _call(self, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None,
                    key: Key) -> bool:
        try:
            async with http.request(method, self.base + path, json=body, ssl=self.ssl) as resp:
                if resp.status in (200, 201, 202) or (method == "DELETE" and resp.status == 404):
                    self.changes += 1
                    log.info("central rbac object %s kind=%s namespace=%s name=%s", _VERB[method], key[0],
                             key[1] or "-", key[2])
                    return True
                detail = (await resp.text())[:200]
                self._failed(f"{method} {key[0]} {key[1] or '-'}/{key[2]} answered {resp.status}: {detail}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed(f"{method} {key[0]} {key[2]}: {_why(exc)}")
        return False

    def _failed(self, error: str) -> None:
        level = logging.DEBUG if error == self._last_error else logging.WARNING
        self._last_error = error
        log.log(level, "central rbac reconcile failed error=%r; retried with backoff and at the next list", error)


_VERB = {"POST": "created", "PUT": "updated", "DELETE": "deleted"}


class _CallFailed(Exception):
    pass


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, _CallFailed) else type(exc).__name__
