"""arc-relay: the public meeting point of agents and clients.

Agents dial ``/agent/v1/connect`` (signed assertion), clients dial
``/client/v1/connect`` (OIDC bearer); the router splices each client stream
onto a stream of the cluster's agent session. ``/api/v1`` manages clusters
and role assignments (``relay/openapi.json``).
"""

from __future__ import annotations

from relay.app import DevTls, RelayServer, ensure_dev_tls, openapi_document
from relay.config import (
    ConfigError,
    IssuerConfig,
    RelayConfig,
    agent_endpoint_url,
    load_relay_config,
    relay_config_from_dict,
)
from relay.directory import LocalDirectory, SessionDirectory
from relay.metrics import RelayMetrics
from relay.registry import Cluster, ClusterRegistry, SqliteDatabase, SqliteRegistry, cluster_id
from relay.roles import (
    ROLES,
    RoleAssignment,
    RoleStore,
    SqliteRoleStore,
    cluster_scope,
    group_scope,
    scope_covers,
)

__all__ = [
    "ROLES",
    "Cluster",
    "ClusterRegistry",
    "ConfigError",
    "DevTls",
    "IssuerConfig",
    "LocalDirectory",
    "RelayConfig",
    "RelayMetrics",
    "RelayServer",
    "RoleAssignment",
    "RoleStore",
    "SessionDirectory",
    "SqliteDatabase",
    "SqliteRegistry",
    "SqliteRoleStore",
    "agent_endpoint_url",
    "cluster_id",
    "cluster_scope",
    "ensure_dev_tls",
    "group_scope",
    "load_relay_config",
    "openapi_document",
    "relay_config_from_dict",
    "scope_covers",
]
