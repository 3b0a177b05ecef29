"""Small, bounded HTTP helpers shared by discovery, JWKS and group resolution.

Every fetch has a timeout and a size cap: an issuer (or anything pretending to
be one) must not be able to stall a validator or make it buffer without end.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from identity.errors import IdentityError

# Discovery documents and JWKS are a few KiB; 1 MiB leaves room for issuers
# that publish many keys while still bounding memory per fetch.
MAX_DOCUMENT_BYTES = 1 << 20
# Long enough for a slow issuer across the internet, short enough that a dead
# one does not hold requests hostage.
DEFAULT_HTTP_TIMEOUT = 10.0


class FetchError(IdentityError):
    """A document could not be fetched or parsed (reason is safe to log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ssl_context(ca_pem: bytes | str | None) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_pem`` (else the system store)."""
    cadata = ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem
    ctx = ssl.create_default_context(cadata=cadata)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def fetch_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    ssl_ctx: ssl.SSLContext,
    timeout: float = DEFAULT_HTTP_TIMEOUT,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
) -> Any:
    """Fetch ``url`` and parse a JSON body of at most :data:`MAX_DOCUMENT_BYTES`.

    Raises:
        FetchError: transport error, timeout, non-2xx status, oversized or
            non-JSON body. The reason names the cause, not the URL's secrets.
    """
    try:
        async with session.request(
            method,
            url,
            ssl=ssl_ctx,
            headers=headers,
            json=json_body,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            if resp.status // 100 != 2:
                raise FetchError(f"HTTP {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
    except FetchError:
        raise
    except TimeoutError as exc:
        raise FetchError("timeout") from exc
    except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
        raise FetchError(type(exc).__name__) from exc
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchError("document too large")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise FetchError("not JSON") from exc
