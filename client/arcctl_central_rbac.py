"""``arcctl update -n NAME [-g GROUP] --central-rbac on|off`` and the
``--enable-central-rbac`` step of ``arcctl connect``: switch central
Kubernetes roles (docs/central-rbac.md) for one registered cluster at the
relay. Idempotent: switching to the current state changes nothing."""

from __future__ import annotations

import argparse
import asyncio
import copy
from typing import Any
from urllib.parse import quote

from client.arcctl_options import add_common_options
from client.auth import TokenSource
from client.config import load_config
from client.output import render
from client.relay_client import RelayApi
from cmdline import Subcommands, add_command

__all__ = ["CENTRAL_RBAC_SUFFIX", "add_update", "set_central_rbac", "with_central_rbac_rights"]

# What the agent needs to keep central roles' objects in the cluster
# (agent/central_rbac_reconcile.py); bind and escalate because it grants
# roles it does not itself hold through a binding. Only clusters deployed
# with --enable-central-rbac get it: without the mode the agent never
# manages RBAC objects.
CENTRAL_RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["rbac.authorization.k8s.io"],
     "resources": ["clusterroles", "clusterrolebindings", "rolebindings"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "bind", "escalate"]},
]
CENTRAL_RBAC_SUFFIX = "-central-rbac"


def _path(group: str, name: str) -> str:
    return f"/api/v1/resourceGroups/{quote(group, safe='')}/clusters/{quote(name, safe='')}/centralRbac"


async def set_central_rbac(api: RelayApi, group: str, name: str, enabled: bool) -> dict[str, Any]:
    """Switch the mode; returns the relay's ``{"enabled", "changed"}``.

    Raises:
        CliError: one line (not registered, no onboarding role, relay unreachable).
    """
    result = await api.request("PUT", _path(group, name), json={"enabled": enabled},
                               what=f"cluster {group}/{name}")
    return dict(result or {})


def with_central_rbac_rights(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``manifests`` plus a ClusterRole (``CENTRAL_RBAC_RULES``) and its
    binding to the agent's ServiceAccount, right after the agent's own pair
    (same labels and ownership annotations, name suffixed ``-central-rbac``)."""
    out: list[dict[str, Any]] = []
    for obj in manifests:
        out.append(obj)
        if obj["kind"] == "ClusterRole":
            role = copy.deepcopy(obj)
            role["metadata"]["name"] += CENTRAL_RBAC_SUFFIX
            role["rules"] = copy.deepcopy(CENTRAL_RBAC_RULES)
            extra_role = role
        elif obj["kind"] == "ClusterRoleBinding":
            binding = copy.deepcopy(obj)
            binding["metadata"]["name"] += CENTRAL_RBAC_SUFFIX
            binding["roleRef"]["name"] = extra_role["metadata"]["name"]
            out += [extra_role, binding]
    return out


def cmd_update(args: argparse.Namespace) -> int:
    """``arcctl update -n NAME [-g GROUP] --central-rbac on|off``."""
    config = load_config(args.config)
    group = args.group or config.resource_group

    async def go() -> dict[str, Any]:
        async with RelayApi(config, TokenSource(config.auth.for_relay())) as api:
            return await set_central_rbac(api, group, args.name, args.central_rbac == "on")
    result = asyncio.run(go())
    print(render({"id": f"{group}/{args.name}", "centralRbac": result}, args.output))
    return 0


def add_update(sub: Subcommands) -> None:
    """Register ``arcctl update`` (client.arcctl's COMMANDS table)."""
    p = add_command(
        sub, "update", summary="change a registered cluster's settings at the relay",
        description="--central-rbac on: the cluster's agent enforces the central Kubernetes roles\n"
                    "(kubernetes-viewer|writer|admin|cluster-admin) assigned with 'arcctl role\n"
                    "assign'; off: it removes every object it made for them. Running it again\n"
                    "changes nothing. Needs the onboarding or admin role on the cluster.",
        examples=["arcctl update -n edge-1 -g lab --central-rbac on",
                  "arcctl update -n edge-1 -g lab --central-rbac off"])
    p.add_argument("-n", "--name", required=True, metavar="NAME", help="the cluster's name at the relay")
    p.add_argument("-g", "--resource-group", dest="group", metavar="GROUP",
                   help="its resource group (default: resource_group in the client config)")
    p.add_argument("--central-rbac", required=True, choices=["on", "off"],
                   help="central Kubernetes roles for this cluster")
    add_common_options(p)
    p.set_defaults(func=cmd_update)
