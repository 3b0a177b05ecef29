"""Resolve a user name to its immutable object id at the provider's directory
(``auth.directory_url``: a Microsoft Graph-shaped ``GET {url}/users/{upn}``),
so that ``arcctl role assign --assignee alice@contoso.example`` stores an
assignment that matches (docs/identity-providers.md). The request carries the
CLI's own token: the sandbox issuer answers it; Microsoft Graph needs a token
for Graph, so with Entra look ids up with ``az ad user show`` instead."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import aiohttp

from client.auth import HTTP_TIMEOUT, TokenSource, ssl_context_for
from client.config import AuthConfig
from client.errors import AuthError, CliError

# What upn, preferred_username and email hold; never an object id or <iss>#<sub>.
_NAME_RE = re.compile(r"[^@#/:\s]+@[^@#/:\s]+\.[^@#/:\s]+")


def looks_like_name(value: str) -> bool:
    """Whether ``value`` is an email-like user name rather than an id."""
    return bool(_NAME_RE.fullmatch(value))


async def object_id_of(auth: AuthConfig, name: str) -> str:
    """The object id the directory at ``auth.directory_url`` gives user ``name``.

    Raises:
        CliError: unknown user, a refusal or an unreachable directory (one line).
    """
    base = (auth.directory_url or "").rstrip("/")
    url = f"{base}/users/{quote(name, safe='@')}"
    token = await TokenSource(auth).get()
    body: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as http, \
                http.get(url, params={"$select": "id"}, headers={"Authorization": f"Bearer {token}"},
                         ssl=ssl_context_for(auth.ca_file, "directory")) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                pass
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        raise CliError(f"cannot reach the directory at {base} ({type(err).__name__}) to look up {name}: "
                       "pass the user's object id instead") from None
    if status == 404:
        raise CliError(f"the directory at {base} has no user {name}: check the name, or pass the object id")
    if status in (401, 403):
        raise AuthError(f"the directory at {base} refused to look up {name} (HTTP {status}): pass the "
                        "user's object id instead (Entra ID: az ad user show --id NAME --query id -o tsv)")
    oid = body.get("id") if isinstance(body, dict) else None
    if status != 200 or not isinstance(oid, str) or not oid or looks_like_name(oid):
        raise CliError(f"the directory at {base} gave no object id for {name} (HTTP {status}): "
                       "pass the object id instead")
    return oid
