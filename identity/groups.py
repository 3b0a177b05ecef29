"""Group overage: where a token's groups come from when they do not fit in it.

Entra leaves ``groups`` out of a token when the user is in more than 200
groups and instead names a source::

    "_claim_names":   {"groups": "src1"},
    "_claim_sources": {"src1": {"endpoint": "https://graph.../users/<oid>/getMemberObjects"}}

A :class:`GroupResolver` turns such claims into the list of group ids. The
validator fails closed when none is configured or it fails: dropping the
groups silently would hand a user fewer (or, with deny rules, more) rights
than they have.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from identity.errors import GroupResolutionError
from identity.http import DEFAULT_HTTP_TIMEOUT, FetchError, fetch_json, ssl_context

log = logging.getLogger("identity")

# Group membership changes slowly and the lookup is a remote call per user;
# ten minutes bounds how long a removed membership lingers.
DEFAULT_GROUP_CACHE_TTL = 600.0
DEFAULT_GROUP_CACHE_SIZE = 4096
# Entra caps transitive memberships far below this; anything bigger is hostile.
MAX_GROUPS = 10_000
# Refresh a client-credentials token this long before it expires.
TOKEN_REFRESH_MARGIN = 60.0


def overage_source(claims: Mapping[str, Any]) -> str | None:
    """The ``_claim_sources`` key named for groups, or None without overage."""
    names = claims.get("_claim_names")
    if isinstance(names, Mapping) and "groups" in names:
        src = names["groups"]
        return src if isinstance(src, str) else ""
    return None


class GroupResolver(Protocol):
    """Resolves the groups of an overage token.

    Implementations must raise :class:`GroupResolutionError` (never return a
    partial list) when they cannot answer.
    """

    async def resolve(self, claims: Mapping[str, Any], ca_pem: bytes | str | None) -> list[str]:
        """Group ids for the (already signature-checked) ``claims``.

        Args:
            claims: the token's claims, with ``_claim_names``/``_claim_sources``.
            ca_pem: the trusted issuer's CA, usable for the source's TLS.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


Credential = str | Callable[[], Awaitable[str]]


class ClientCredentialsToken:
    """A bearer token obtained with the OAuth2 client-credentials grant and
    cached until shortly before it expires. Call the instance to get a token.

    Args:
        token_endpoint: the issuer's token endpoint.
        client_id, client_secret: the service principal's credentials.
        scope: e.g. ``https://graph.microsoft.com/.default``.
        ca_pem: CA for the token endpoint, else the system store.
    """

    def __init__(
        self,
        token_endpoint: str,
        client_id: str,
        client_secret: str,
        scope: str,
        *,
        ca_pem: bytes | str | None = None,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
    ) -> None:
        self._endpoint = token_endpoint
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": scope,
        }
        self._ssl = ssl_context(ca_pem)
        self._timeout = http_timeout
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._expires - TOKEN_REFRESH_MARGIN:
                return self._token
            if self._session is None:
                self._session = aiohttp.ClientSession()
            try:
                async with self._session.post(
                    self._endpoint,
                    data=self._form,
                    ssl=self._ssl,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as resp:
                    body = await resp.json(content_type=None) if resp.status == 200 else None
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                raise GroupResolutionError("credential request failed") from exc
            if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise GroupResolutionError("credential request refused")
            self._token = body["access_token"]
            self._expires = time.monotonic() + float(body.get("expires_in", 300))
            return self._token

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpGroupResolver:
    """The default group source: POST the member-groups endpoint (Microsoft
    Graph ``getMemberObjects`` style) and read ``{"value": [ids]}``.

    Args:
        credential: bearer token for the endpoint, or an async callable
            returning one (e.g. :class:`ClientCredentialsToken`).
        endpoint_template: if set, the URL to call, formatted with ``oid`` and
            ``tid`` (e.g. ``https://graph.microsoft.com/v1.0/users/{oid}/getMemberObjects``);
            otherwise the endpoint named in the token's ``_claim_sources``.
        allowed_hosts: if set, only endpoints on these hosts are called (the
            credential is never sent anywhere else).
        ca_pem: CA for the endpoint; default: the issuer's CA, else the system store.
        cache_ttl, cache_size: per (tid, oid) cache of answers.
    """

    def __init__(
        self,
        credential: Credential,
        *,
        endpoint_template: str | None = None,
        allowed_hosts: Sequence[str] | None = None,
        ca_pem: bytes | str | None = None,
        cache_ttl: float = DEFAULT_GROUP_CACHE_TTL,
        cache_size: int = DEFAULT_GROUP_CACHE_SIZE,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
    ) -> None:
        self._credential = credential
        self._template = endpoint_template
        self._allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None
        self._ca_pem = ca_pem
        self._ttl = cache_ttl
        self._cache_size = cache_size
        self._timeout = http_timeout
        self._cache: OrderedDict[tuple[str, str], tuple[float, list[str]]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._ssl_contexts: dict[bytes | str | None, ssl.SSLContext] = {}
        #: lookups that went to the network
        self.fetch_count = 0

    async def resolve(self, claims: Mapping[str, Any], ca_pem: bytes | str | None) -> list[str]:
        """See :meth:`GroupResolver.resolve`."""
        oid, tid = claims.get("oid") or claims.get("sub"), claims.get("tid") or ""
        if not isinstance(oid, str) or not oid or not isinstance(tid, str):
            raise GroupResolutionError("token has no object id")
        key = (tid, oid)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() < hit[0]:
            self._cache.move_to_end(key)
            return list(hit[1])
        url = self._endpoint(claims, oid, tid)
        groups = await self._fetch(url, ca_pem)
        self._cache[key] = (time.monotonic() + self._ttl, groups)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return list(groups)

    def _endpoint(self, claims: Mapping[str, Any], oid: str, tid: str) -> str:
        if self._template is not None:
            url = self._template.format(oid=quote(oid, safe=""), tid=quote(tid, safe=""))
        else:
            sources, src = claims.get("_claim_sources"), overage_source(claims)
            entry = sources.get(src) if isinstance(sources, Mapping) and src else None
            endpoint = entry.get("endpoint") if isinstance(entry, Mapping) else None
            if not isinstance(endpoint, str):
                raise GroupResolutionError("token names no group source")
            url = endpoint
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise GroupResolutionError("group source is not https")
        if self._allowed_hosts is not None and parts.hostname.lower() not in self._allowed_hosts:
            raise GroupResolutionError("group source host not allowed")
        return url

    def _ssl(self, ca_pem: bytes | str | None) -> ssl.SSLContext:
        # Building a context parses the CA bundle; do it once per CA.
        ctx = self._ssl_contexts.get(ca_pem)
        if ctx is None:
            ctx = self._ssl_contexts[ca_pem] = ssl_context(ca_pem)
        return ctx

    async def _fetch(self, url: str, issuer_ca: bytes | str | None) -> list[str]:
        token = self._credential if isinstance(self._credential, str) else await self._credential()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.fetch_count += 1
        try:
            doc = await fetch_json(
                self._session,
                "POST",
                url,
                ssl_ctx=self._ssl(self._ca_pem if self._ca_pem is not None else issuer_ca),
                timeout=self._timeout,
                headers={"Authorization": f"Bearer {token}"},
                json_body={"securityEnabledOnly": False},
            )
        except FetchError as exc:
            log.warning("group source failed reason=%s", exc.reason)
            raise GroupResolutionError(f"group source failed: {exc.reason}") from exc
        value = doc.get("value") if isinstance(doc, dict) else None
        if not isinstance(value, list) or len(value) > MAX_GROUPS:
            raise GroupResolutionError("group source answer malformed")
        if not all(isinstance(g, str) for g in value):
            raise GroupResolutionError("group source answer malformed")
        return list(value)

    async def close(self) -> None:
        """Close the HTTP session (and the credential's, if it has one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()
