"""OIDC discovery: the issuer's ``.well-known/openid-configuration`` names
the endpoints ``arcctl login`` uses, so the client config needs only the
issuer URL (and the CA that issuer's TLS chains to)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from client.auth import HTTP_TIMEOUT, ssl_context_for
from client.errors import AuthError

__all__ = ["Endpoints", "discover"]


@dataclass(frozen=True)
class Endpoints:
    """The endpoints of one issuer (None: the issuer does not offer it)."""

    issuer: str
    token_endpoint: str
    device_authorization_endpoint: str | None
    authorization_endpoint: str | None


async def discover(issuer: str, ca_file: str | None) -> Endpoints:
    """Fetch and check ``<issuer>/.well-known/openid-configuration``.

    Raises:
        AuthError: unreachable, not a discovery document, or its ``issuer``
            is not the configured one (OIDC Discovery 4.3).
        ConfigError: the CA file cannot be read.
    """
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    ctx = ssl_context_for(ca_file, "identity provider")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as s:
            async with s.get(url, ssl=ctx) as resp:
                if resp.status != 200:
                    raise AuthError(f"the issuer's discovery document {url} answered HTTP {resp.status}: "
                                    "check auth.issuer in the client config")
                doc: Any = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        raise AuthError(f"{url} is not a discovery document (not JSON): "
                        "check auth.issuer in the client config") from None
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        raise AuthError(f"cannot reach the issuer at {url} ({type(err).__name__}): "
                        "check auth.issuer and auth.ca_file in the client config") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("token_endpoint"), str):
        raise AuthError(f"{url} names no token_endpoint: check auth.issuer in the client config")
    if doc.get("issuer") != issuer:
        raise AuthError(f"the discovery document at {url} is for issuer {doc.get('issuer')!r}, not "
                        f"{issuer!r}: set auth.issuer to the issuer's exact URL")

    def optional(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) and value else None

    return Endpoints(issuer, doc["token_endpoint"], optional("device_authorization_endpoint"),
                     optional("authorization_endpoint"))
