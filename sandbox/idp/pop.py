"""Proof-of-possession at the sandbox issuer, as Entra does it for MSAL and
kubelogin's ``--pop-enabled``: a token request with ``token_type=pop`` and
``req_cnf`` (base64url of ``{"kid": <RFC 7638 thumbprint of the client's
public key>}``) gets an access token bound to that key by a ``cnf: {"kid"}``
claim, and ``token_type: pop`` in the response. A request without them gets a
plain bearer token, as before (docs/pop.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

__all__ = ["PopRequestError", "requested_cnf"]

# A SHA-256 thumbprint in base64url is 43 characters; allow other hashes' lengths.
_THUMBPRINT = re.compile(r"^[A-Za-z0-9_-]{22,86}$")
# req_cnf is a small JSON object; bound what is decoded.
MAX_REQ_CNF = 2048


class PopRequestError(ValueError):
    """``req_cnf`` is missing or malformed (the token endpoint answers invalid_request)."""


def requested_cnf(params: dict[str, str]) -> dict[str, Any] | None:
    """The ``cnf`` claim a token request asks for, or None for a bearer token.

    Raises:
        PopRequestError: ``token_type=pop`` without a usable ``req_cnf``, or
            ``req_cnf`` without ``token_type=pop``.
    """
    token_type = params.get("token_type", "")
    raw = params.get("req_cnf")
    if token_type != "pop":
        if raw is not None:
            raise PopRequestError("req_cnf needs token_type=pop.")
        return None
    if not raw or len(raw) > MAX_REQ_CNF:
        raise PopRequestError("token_type=pop needs req_cnf (base64url of {\"kid\": thumbprint}).")
    try:
        doc = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise PopRequestError("req_cnf is not base64url-encoded JSON.") from exc
    kid = doc.get("kid") if isinstance(doc, dict) else None
    if not isinstance(kid, str) or not _THUMBPRINT.match(kid):
        raise PopRequestError("req_cnf has no key thumbprint (kid).")
    return {"kid": kid}
