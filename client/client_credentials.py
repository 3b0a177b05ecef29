"""The client-credentials grant's client authentication, for CI pipelines and
automation (workload identity), as kubelogin's ``spn`` and
``workloadidentity`` modes do it:

* a client secret (``auth.client_secret`` or ``auth.client_secret_file``);
* a certificate: a ``private_key_jwt`` client assertion (RFC 7523 section 2.2)
  signed with the certificate's key, ``iss`` = ``sub`` = client id, ``aud`` =
  the token endpoint, a fresh ``jti``, a short ``exp``, and the certificate's
  ``x5t#S256`` thumbprint in the header, as Entra expects;
* a federated token file (``AZURE_FEDERATED_TOKEN_FILE``, e.g. a Kubernetes
  projected service-account token or a CI job's OIDC token): its content is
  the ``client_assertion``. The file rotates, so it is read again for every
  token request, never cached.

With ``auth.login: client_credentials`` missing keys fall back to the
environment variables azure-workload-identity sets in a pod:
``AZURE_CLIENT_ID``, ``AZURE_FEDERATED_TOKEN_FILE``, and ``AZURE_AUTHORITY_HOST``
+ ``AZURE_TENANT_ID`` for the issuer (``<host>/<tenant>/v2.0``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import time
import uuid
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from client.config import AuthConfig
from client.errors import ConfigError

__all__ = [
    "ASSERTION_LIFETIME",
    "JWT_BEARER_ASSERTION",
    "client_authentication",
    "client_id_of",
    "issuer_of",
    "uses_client_credentials",
]

JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A private_key_jwt assertion is used once, right away: 5 minutes covers clock
# skew; Entra refuses more than 10.
ASSERTION_LIFETIME = 300

CLIENT_ID_ENV = "AZURE_CLIENT_ID"
TENANT_ID_ENV = "AZURE_TENANT_ID"
AUTHORITY_HOST_ENV = "AZURE_AUTHORITY_HOST"
FEDERATED_TOKEN_FILE_ENV = "AZURE_FEDERATED_TOKEN_FILE"


def uses_client_credentials(auth: AuthConfig) -> bool:
    """Whether ``auth`` asks for the client-credentials grant: ``login:
    client_credentials``, or a client credential without a user name."""
    if auth.login == "client_credentials":
        return True
    return not auth.username and any((auth.client_secret, auth.client_secret_file,
                                      auth.client_certificate_file, auth.federated_token_file))


def _workload(auth: AuthConfig) -> bool:
    # Environment fallbacks only where asked for: a person's config never
    # silently picks up a pod's identity.
    return auth.login == "client_credentials"


def client_id_of(auth: AuthConfig) -> str:
    """The client id: ``auth.client_id``, else ``$AZURE_CLIENT_ID``.

    Raises:
        ConfigError: neither is set.
    """
    found = auth.client_id or (os.environ.get(CLIENT_ID_ENV) if _workload(auth) else None)
    if not found:
        raise ConfigError(f"the client-credentials grant needs auth.client_id in the client config "
                          f"(or ${CLIENT_ID_ENV})")
    return found


def issuer_of(auth: AuthConfig) -> str | None:
    """``auth.issuer``, else ``$AZURE_AUTHORITY_HOST/$AZURE_TENANT_ID/v2.0`` (None: neither)."""
    if auth.issuer:
        return auth.issuer
    host, tenant = os.environ.get(AUTHORITY_HOST_ENV), os.environ.get(TENANT_ID_ENV)
    if _workload(auth) and host and tenant:
        return f"{host.rstrip('/')}/{tenant}/v2.0"
    return None


def client_authentication(auth: AuthConfig, client_id: str, token_endpoint: str) -> dict[str, str]:
    """The form fields that authenticate the client at ``token_endpoint``.
    Files are read now, on every call (they rotate).

    Raises:
        ConfigError: no credential configured, or one that cannot be read.
    """
    given = [name for name in ("client_secret", "client_secret_file", "client_certificate_file",
                               "federated_token_file") if getattr(auth, name)]
    if len(given) > 1:
        raise ConfigError(f"client config auth sets {' and '.join(given)}: keep only one client credential")
    if auth.client_key_file and not auth.client_certificate_file:
        raise ConfigError("client config auth.client_key_file is set without auth.client_certificate_file: "
                          "add the certificate, or remove the key")
    federated = auth.federated_token_file or (
        os.environ.get(FEDERATED_TOKEN_FILE_ENV) if _workload(auth) else None)
    if auth.client_secret:
        return {"client_secret": auth.client_secret}
    if auth.client_secret_file:
        return {"client_secret": _read_text(auth.client_secret_file, "auth.client_secret_file")}
    if auth.client_certificate_file:
        return _assertion_form(_private_key_jwt(auth, client_id, token_endpoint))
    if federated:
        return _assertion_form(_read_text(federated, "the federated token file"))
    raise ConfigError("the client-credentials grant needs a credential in the client config: "
                      "auth.client_secret_file, auth.client_certificate_file or auth.federated_token_file "
                      f"(or ${FEDERATED_TOKEN_FILE_ENV})")


def _assertion_form(assertion: str) -> dict[str, str]:
    return {"client_assertion_type": JWT_BEARER_ASSERTION, "client_assertion": assertion}


def _read_text(path: str, what: str) -> str:
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path} ({err.strerror}): check the path in the client "
                          "config") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not text: check the path in the client config") from None
    if not text:
        raise ConfigError(f"{what} {path} is empty: check the path in the client config")
    return text


@functools.lru_cache(maxsize=8)
def _load_key(pem: bytes) -> PrivateKeyTypes:
    # Keyed by the file's content, so a rotated key is loaded afresh; loading
    # an RSA key checks it (tens to hundreds of ms), which need not recur on
    # every renewal.
    return serialization.load_pem_private_key(pem, password=None)


def _private_key_jwt(auth: AuthConfig, client_id: str, token_endpoint: str) -> str:
    cert_path = auth.client_certificate_file or ""
    cert_pem = _read_text(cert_path, "auth.client_certificate_file").encode()
    key_path = auth.client_key_file or cert_path  # one PEM may hold both, as azure-identity allows
    key_pem = _read_text(key_path, "auth.client_key_file").encode()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"auth.client_certificate_file {cert_path} holds no PEM certificate") from None
    try:
        key = _load_key(key_pem)
    except (ValueError, TypeError):
        raise ConfigError(f"{key_path} holds no unencrypted PEM private key: set auth.client_key_file "
                          "to the certificate's key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = "ES256"
    else:
        raise ConfigError(f"{key_path}: only RSA and EC keys can sign a client assertion")
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != key.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(f"auth.client_key_file {key_path} is not the key of auth.client_certificate_file "
                          f"{cert_path}: give the matching pair")
    der = cert.public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_endpoint, "jti": str(uuid.uuid4()),
              "iat": now, "nbf": now, "exp": now + ASSERTION_LIFETIME}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"x5t#S256": thumbprint, "typ": "JWT"})
