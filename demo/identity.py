"""Who is who in the demo: the sandbox issuer's built-in users (fixed ids in
``sandbox/idp/demo-users.yaml``), and the ``oidc`` config section with which
the relay and kube-aad-proxy trust that issuer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["AUDIENCE", "RELAY_AUDIENCE", "DemoIdentity", "load_demo_identity", "oidc_section"]

# The audience of kubectl's tokens, which every cluster's kube-aad-proxy sees.
AUDIENCE = "api://cluster-connect"
# The relay's own audience: no cluster ever sees (nor accepts) a token for it,
# so a token captured inside a cluster opens nothing at the relay.
RELAY_AUDIENCE = "api://cluster-connect-relay"


@dataclass(frozen=True)
class DemoIdentity:
    """Who is who in the sandbox issuer's built-in directory."""

    tenant_id: str
    user: str
    password: str
    user_oid: str
    admin: str
    admin_password: str
    admin_oid: str
    client_id: str
    # The service principal that reads group memberships for overage users.
    group_reader_client_id: str = ""
    group_reader_secret: str = ""


def load_demo_identity() -> DemoIdentity:
    """Read sandbox/idp/demo-users.yaml (the ids are fixed there)."""
    import sandbox.idp

    path = Path(sandbox.idp.__file__).resolve().parent / "demo-users.yaml"
    doc = yaml.safe_load(path.read_text())
    users = {u["username"]: u for u in doc["users"]}
    demo, admin = users["demo@contoso.example"], users["admin@contoso.example"]
    clients = doc.get("public_clients") or [{"client_id": "arc-cli"}]
    sps = doc.get("service_principals") or [{}]
    return DemoIdentity(
        tenant_id=str(doc["tenant_id"]), user=demo["username"], password=str(demo["password"]),
        user_oid=str(demo["oid"]), admin=admin["username"], admin_password=str(admin["password"]),
        admin_oid=str(admin["oid"]), client_id=str(clients[0]["client_id"]),
        group_reader_client_id=str(sps[0].get("client_id", "")),
        group_reader_secret=str(sps[0].get("client_secret", "")))


def oidc_section(identity: DemoIdentity, idp: dict[str, Any], group_reader_secret_file: Path,
                 audience: str = AUDIENCE) -> dict[str, Any]:
    """The ``oidc`` section of the relay's and the agent's config: the sandbox
    issuer, its tenant only, and its member-groups endpoint as the overage group source.

    Args:
        identity: the demo's users and service principal.
        idp: the issuer's ready data (``url``, ``issuer``, ``token_endpoint``, ``ca_file``).
        group_reader_secret_file: the group reader's client secret (a 0600 file).
        audience: the accepted ``aud`` (the relay's: :data:`RELAY_AUDIENCE`).
    """
    host = str(idp["url"]).split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    return {
        "issuers": [{"issuer": idp["issuer"], "audiences": [audience],
                     "ca_file": idp["ca_file"], "tenant_ids": [identity.tenant_id]}],
        "group_source": {"token_endpoint": idp["token_endpoint"],
                         "client_id": identity.group_reader_client_id,
                         "client_secret_file": str(group_reader_secret_file),
                         "scope": "https://graph.microsoft.com/.default",
                         # The oid comes from the validated token, never from a URL in it.
                         "endpoint_template": f"{idp['url']}/v1.0/users/{{oid}}/getMemberObjects",
                         "allowed_hosts": [host], "ca_file": idp["ca_file"]},
    }
