"""Client authentication at the token endpoint, as Entra does it for a
confidential client:

* ``client_secret`` (form field, or HTTP Basic);
* ``private_key_jwt`` (RFC 7523 section 2.2, OIDC Core 9): a JWT signed with
  the key of a certificate registered on the application, ``iss`` = ``sub`` =
  client id, ``aud`` = the token endpoint, a ``jti`` never seen before and a
  short ``exp``; the certificate is picked by the ``x5t#S256`` (or ``x5t``)
  header;
* a federated assertion (Entra's workload identity federation): a JWT from a
  trusted external issuer (a Kubernetes service-account issuer, a CI system)
  whose ``iss``/``sub``/``aud`` match a federated credential of the application.

Every failure is ``invalid_client`` (RFC 7523 section 3.2, RFC 6749 section 5.2:
the client did not authenticate), with the Entra error code. A federated token
is not refused as a replay: Kubernetes hands a workload the same projected
token until it rotates it (at 80% of its lifetime), and Entra accepts it each
time; the ``jti`` of a ``private_key_jwt`` assertion, which the client mints
for every request, is single-use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sandbox.idp.users import Directory, FederatedCredential, ServicePrincipal

JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Asymmetric algorithms only: an HMAC "signature" keyed with a public
# certificate proves nothing.
ASSERTION_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
# Clock skew allowed on exp/nbf/iat (Entra allows 5 minutes).
ASSERTION_LEEWAY = 300
# A private_key_jwt assertion may live at most this long (Entra: 10 minutes);
# this also bounds how long its jti has to be remembered.
MAX_ASSERTION_LIFETIME = 600
# Bounds the table of jtis seen within their lifetime; beyond it new
# assertions are refused until old ones expire (never forgotten early, which
# would let a captured assertion be replayed).
MAX_SEEN_ASSERTIONS = 10_000
# How many accepted assertions ``accepted`` keeps for tests to look at.
ACCEPTED_LOG = 100
# Entra allows 20 federated identity credentials per application.
MAX_ADDED_FEDERATIONS = 20


class ClientAuthError(Exception):
    """The client did not authenticate (the handler turns this into an OAuth2 error)."""

    def __init__(self, description: str, code: int, error: str = "invalid_client", status: int = 401) -> None:
        super().__init__(description)
        self.error, self.description, self.code, self.status = error, description, code, status


@dataclass(frozen=True)
class ClientAuthentication:
    """Who authenticated, and how (``client_secret``, ``private_key_jwt``, ``federated``)."""

    app: ServicePrincipal
    method: str


class ClientAuthenticator:
    """Checks the credentials of a token request against the directory.

    Args:
        directory: the registered applications.
    """

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        # Trusts added at run time (the Graph-like endpoint), by client id.
        self.added_federations: dict[str, list[FederatedCredential]] = {}
        self._seen: dict[tuple[str, str], float] = {}  # (client id, jti) -> exp
        #: (client id, method, jti) of the last accepted assertions, newest last (tests)
        self.accepted: deque[tuple[str, str, str]] = deque(maxlen=ACCEPTED_LOG)

    def authenticate(self, params: dict[str, str], authorization: str, audiences: list[str]) -> ClientAuthentication:
        """The application that authenticated with ``params`` (the token
        request's form) and the ``Authorization`` header. ``audiences``: what
        a ``private_key_jwt`` assertion's ``aud`` may be (the token endpoint
        URL, and the issuer, as RFC 7523 allows).

        Raises:
            ClientAuthError: no valid client authentication.
        """
        if "client_assertion" in params or "client_assertion_type" in params:
            return self._assertion(params, audiences)
        client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
        if authorization.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ClientAuthError("Malformed client authentication.", 7000215) from exc
        app = self.directory.find_app(client_id) if client_id else None
        if app is None or app.client_id != client_id or not app.secret_matches(secret):
            raise ClientAuthError("Invalid client secret provided.", 7000215)
        return ClientAuthentication(app, "client_secret")

    def _assertion(self, params: dict[str, str], audiences: list[str]) -> ClientAuthentication:
        if params.get("client_assertion_type") != JWT_BEARER_ASSERTION:
            raise ClientAuthError(f"client_assertion_type must be {JWT_BEARER_ASSERTION}.", 50027,
                                  error="invalid_request", status=400)
        assertion = params.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise ClientAuthError("The client assertion is not a JWT.", 50027) from exc
        client_id = params.get("client_id") or str(unverified.get("iss", ""))
        app = self.directory.find_app(client_id) if client_id else None
        if app is None or app.client_id != client_id:
            raise ClientAuthError("Application not found in the directory.", 700016)
        if unverified.get("iss") == app.client_id:
            method = self._private_key_jwt(app, assertion, header, audiences)
        else:
            method = self._federated(app, assertion, str(unverified.get("iss", "")))
        self.accepted.append((app.client_id, method, str(unverified.get("jti", ""))))
        return ClientAuthentication(app, method)

    def add_federation(self, client_id: str, trust: FederatedCredential) -> None:
        """Trust ``trust`` for the application ``client_id`` from now on."""
        added = self.added_federations.setdefault(client_id, [])
        if len(added) >= MAX_ADDED_FEDERATIONS:
            raise ClientAuthError(f"At most {MAX_ADDED_FEDERATIONS} federated credentials per application.",
                                  1100001, error="invalid_request", status=400)
        added.append(trust)

    # -- private_key_jwt ---------------------------------------------------

    def _private_key_jwt(self, app: ServicePrincipal, assertion: str, header: dict[str, Any],
                         audiences: list[str]) -> str:
        cert = _certificate_for(app, header)
        if cert is None:
            raise ClientAuthError("No certificate registered on the application matches the assertion's "
                                  "x5t#S256 thumbprint.", 700027)
        claims = _verify(assertion, cert.public_key(), audiences, app.client_id,
                         "The client assertion", 700027)
        if claims.get("sub") != app.client_id:
            raise ClientAuthError("The client assertion's sub must be the client id.", 700023)
        if claims["exp"] - time.time() > MAX_ASSERTION_LIFETIME:
            raise ClientAuthError(f"The client assertion is valid for more than {MAX_ASSERTION_LIFETIME} s.",
                                  700024)
        self._remember(app.client_id, claims)
        return "private_key_jwt"

    def _remember(self, client_id: str, claims: dict[str, Any]) -> None:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise ClientAuthError("The client assertion has no jti.", 700023)
        now = time.time()
        key = (client_id, jti)
        if key in self._seen and self._seen[key] + ASSERTION_LEEWAY > now:
            raise ClientAuthError("The client assertion was already used (replayed jti).", 700025)
        if len(self._seen) >= MAX_SEEN_ASSERTIONS:
            self._seen = {k: exp for k, exp in self._seen.items() if exp + ASSERTION_LEEWAY > now}
        if len(self._seen) >= MAX_SEEN_ASSERTIONS:
            raise ClientAuthError("Too many client assertions in flight; retry later.", 90033,
                                  error="temporarily_unavailable", status=503)
        self._seen[key] = float(claims["exp"])

    # -- federated credentials ---------------------------------------------

    def _federated(self, app: ServicePrincipal, assertion: str, issuer: str) -> str:
        known = [*app.federated_credentials, *self.added_federations.get(app.client_id, [])]
        trusts = [f for f in known if f.issuer == issuer]
        if not trusts:
            raise ClientAuthError(f"No federated identity credential of the application trusts issuer "
                                  f"{issuer!r}.", 70021)
        failure: ClientAuthError | None = None
        subject: object = None
        for trust in trusts:  # one issuer may be trusted for several subjects or audiences
            try:
                claims = _verify(assertion, _public_key(trust), [trust.audience], issuer,
                                 "The federated token", 700213)
            except ClientAuthError as exc:
                failure = exc
                continue
            if claims.get("sub") == trust.subject:
                return "federated"
            subject = claims.get("sub")
        if subject is None and failure is not None:
            raise failure
        raise ClientAuthError(f"No federated identity credential of the application matches subject "
                              f"{subject!r} of issuer {issuer!r}.", 70021)


def _verify(token: str, key: Any, audiences: list[str], issuer: str, what: str, code: int) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=ASSERTION_ALGORITHMS, audience=audiences, issuer=issuer,
            leeway=ASSERTION_LEEWAY, options={"require": ["exp", "iss", "sub", "aud"]})
    except jwt.InvalidSignatureError as exc:
        raise ClientAuthError(f"{what}'s signature does not verify.", code) from exc
    except jwt.ExpiredSignatureError as exc:
        raise ClientAuthError(f"{what} has expired.", 700024) from exc
    except jwt.InvalidAudienceError as exc:
        raise ClientAuthError(f"{what}'s aud must be one of {', '.join(audiences)}.", 700212) from exc
    except jwt.PyJWTError as exc:
        raise ClientAuthError(f"{what} is invalid ({type(exc).__name__}).", code) from exc
    return claims


def _certificate_for(app: ServicePrincipal, header: dict[str, Any]) -> x509.Certificate | None:
    wanted_s256, wanted_sha1 = header.get("x5t#S256"), header.get("x5t")
    for pem in app.certificates:
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        if wanted_s256 == _b64(hashlib.sha256(der).digest()):
            return cert
        if wanted_sha1 and wanted_sha1 == _b64(hashlib.sha1(der).digest()):  # x5t: Entra's SHA-1 thumbprint
            return cert
    return None


def _public_key(trust: FederatedCredential) -> Any:
    if b"CERTIFICATE-----" in trust.public_key_pem:
        return x509.load_pem_x509_certificate(trust.public_key_pem).public_key()
    return serialization.load_pem_public_key(trust.public_key_pem)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
