"""Graph-like endpoint to add a federated identity credential to an
application at run time, as an operator does with
``az ad app federated-credential create`` (Graph:
``POST /v1.0/applications/{id}/federatedIdentityCredentials``).

Entra fetches the external issuer's keys from its discovery document; the
sandbox takes them in the request (``publicKey``, PEM, a sandbox extension),
so a test can play a Kubernetes service-account issuer with a local key.
The caller needs a token of this issuer for a member of the directory's
``cluster-admins`` group (Graph would ask for Application.ReadWrite.All).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sandbox.idp.client_auth import ClientAuthenticator, ClientAuthError
from sandbox.idp.tokens import TokenMinter
from sandbox.idp.users import FEDERATION_AUDIENCE, FederatedCredential

ADMIN_GROUP = "cluster-admins"
MAX_BODY = 64 * 1024


class FederationEndpoint:
    """``POST /v1.0/applications/{client_id}/federatedIdentityCredentials``."""

    def __init__(self, minter: TokenMinter, client_auth: ClientAuthenticator) -> None:
        self.minter = minter
        self.client_auth = client_auth

    def route(self) -> web.RouteDef:
        return web.post("/v1.0/applications/{client_id}/federatedIdentityCredentials", self.add)

    async def add(self, request: web.Request) -> web.Response:
        """Add one trust; answers 201 with the credential (without the key)."""
        auth = request.headers.get("Authorization", "")
        claims = self.minter.verify_own(auth[7:]) if auth[:7].lower() == "bearer " else None
        if claims is None:
            return _error(401, "InvalidAuthenticationToken", "Access token is missing or invalid.")
        admins = self.minter.directory.groups.get(ADMIN_GROUP)
        if admins is None or admins not in (claims.get("groups") or []):
            return _error(403, "Authorization_RequestDenied", "Insufficient privileges.")
        app = self.minter.directory.find_app(request.match_info["client_id"])
        if app is None or app not in self.minter.directory.service_principals:
            return _error(404, "Request_ResourceNotFound", "No confidential application with this id.")
        try:
            body: Any = json.loads(await request.content.read(MAX_BODY))
            audiences = body.get("audiences") or [FEDERATION_AUDIENCE]
            trust = FederatedCredential(str(body["issuer"]), str(body["subject"]), str(audiences[0]),
                                        str(body["publicKey"]).encode())
            _check_key(trust.public_key_pem)
            self.client_auth.add_federation(app.client_id, trust)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return _error(400, "Request_BadRequest", "Expected JSON with issuer, subject, audiences and "
                          "publicKey (PEM).")
        except ClientAuthError as exc:
            return _error(exc.status, "Request_BadRequest", exc.description)
        return web.json_response({"issuer": trust.issuer, "subject": trust.subject,
                                  "audiences": [trust.audience]}, status=201)


def _check_key(pem: bytes) -> None:
    if b"CERTIFICATE-----" in pem:
        x509.load_pem_x509_certificate(pem)
    else:
        serialization.load_pem_public_key(pem)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
