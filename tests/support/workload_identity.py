"""Workload identity fixtures: a stand-in Kubernetes service-account issuer
(its own EC key, as a cluster's ``--service-account-signing-key``) whose
tokens the sandbox issuer trusts through a federated credential, an
application certificate for ``private_key_jwt``, and a users file that
registers both beside the demo directory."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs import KeyPair, generate_key_pair
from sandbox.idp import DEMO_USERS_FILE

SA_ISSUER = "https://oidc.ci-cluster.sandbox.example"
SA_SUBJECT = "system:serviceaccount:ci:deployer"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
# Two applications of their own, so tests never share the demo's CI secret.
FEDERATED_APP = "5b0c7a43-2f44-4b7e-9f7e-0c7f1c1a9a01"
CERTIFICATE_APP = "5b0c7a43-2f44-4b7e-9f7e-0c7f1c1a9a02"
# The demo's CI service principal (group cluster-admins: a relay admin).
DEMO_CI_APP = "2788b2a2-9ad3-4af4-8567-a7214ea67c4a"


class ServiceAccountIssuer:
    """Signs projected-service-account-like tokens (ES256, like kube-apiserver)."""

    def __init__(self, issuer: str = SA_ISSUER) -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def token(self, subject: str = SA_SUBJECT, audience: str = TOKEN_EXCHANGE_AUDIENCE,
              lifetime: int = 3600, *, key: Any = None, **claims: Any) -> str:
        """A token as kubelet projects it (``claims`` override)."""
        now = int(time.time())
        body = {"iss": self.issuer, "sub": subject, "aud": [audience], "iat": now, "nbf": now,
                "exp": now + lifetime, "jti": str(uuid.uuid4()), **claims}
        return jwt.encode(body, key or self.key, algorithm="ES256", headers={"kid": "sa-1"})


@dataclass(frozen=True)
class WorkloadDirectory:
    """The users file written and what it registers."""

    users_file: Path
    sa_issuer: ServiceAccountIssuer
    app_keys: KeyPair
    cert_file: Path
    key_file: Path


def write_workload_directory(tmp: Path) -> WorkloadDirectory:
    """The demo directory plus a federated and a certificate application."""
    tmp.mkdir(parents=True, exist_ok=True)
    sa = ServiceAccountIssuer()
    keys = generate_key_pair("ci-deployer", kind="rsa")
    cert_file, key_file = tmp / "app.crt", tmp / "app.key"
    cert_file.write_bytes(keys.certificate_pem)
    key_file.write_bytes(keys.private_key_pem)
    key_file.chmod(0o600)
    doc = yaml.safe_load(DEMO_USERS_FILE.read_text())
    doc["service_principals"] += [
        {"name": "ci-federated", "client_id": FEDERATED_APP, "groups": ["cluster-admins"],
         "federated_credentials": [{"issuer": sa.issuer, "subject": SA_SUBJECT,
                                    "audience": TOKEN_EXCHANGE_AUDIENCE, "public_key": sa.public_key_pem}]},
        {"name": "ci-certificate", "client_id": CERTIFICATE_APP, "groups": ["cluster-admins"],
         "certificates": ["app.crt"]},
    ]
    users = tmp / "users.yaml"
    users.write_text(yaml.safe_dump(doc, sort_keys=False))
    return WorkloadDirectory(users, sa, keys, cert_file, key_file)
