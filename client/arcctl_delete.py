"""``arcctl delete``: remove a cluster's agent from the cluster and its
registration from the relay.

Without ``--force`` the in-cluster objects must be removed first; if the
cluster cannot be reached the command stops and the registration stays, so
the user can retry or choose ``--force``. With ``--force`` a failure in the
cluster is reported and the registration is removed anyway; the next
``arcctl connect`` to that cluster replaces the leftovers (fresh keys).
Deleting the registration also ends the agent's session at the relay and
makes its key worthless there. Only objects this install owns are deleted
(``client.manifests.OWNER_ANNOTATION``); anything else with the same name, or
installed by Helm, is left alone and named in the output. The objects the
agent itself made for central Kubernetes roles (labelled
``CENTRAL_OWNED_SELECTOR``: docs/central-rbac.md) go too: once the agent is
gone nothing keeps them current.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from client.arcctl_central_rbac import CENTRAL_RBAC_SUFFIX, with_central_rbac_rights
from client.arcctl_connect import owner_of, read_in_cluster
from client.arcctl_options import add_cluster_options, add_common_options
from client.auth import TokenSource
from client.config import load_config
from client.errors import CliError, ClusterNotFound
from client.manifests import MANAGED_BY_ARCCTL, MANAGED_BY_LABEL, AgentValues, build_manifests
from client.relay_client import RelayApi
from cmdline import Subcommands, add_command

if TYPE_CHECKING:
    from client.kube_apply import KubeTarget

__all__ = ["CENTRAL_OWNED_SELECTOR", "add_delete", "cmd_delete", "remove_central_rbac_objects"]

# The label the agent puts on every object it makes for central roles
# (agent/central_rbac_objects.py OWNED_LABEL=OWNED_VALUE; client may not
# import agent: tests/client/test_arcctl_delete_central.py checks they agree).
CENTRAL_OWNED_SELECTOR = "cluster-connect.dev/central-rbac=owned"
_RBAC = "/apis/rbac.authorization.k8s.io/v1"
_CENTRAL_KINDS = ("rolebindings", "clusterrolebindings", "clusterroles")


def confirm(question: str) -> bool:
    """Ask on the terminal.

    Raises:
        CliError: stdin is not a terminal (a script must pass ``-y``).
    """
    if not sys.stdin.isatty():
        raise CliError("refusing to delete without confirmation: stdin is not a terminal; pass -y/--yes")
    answer = input(f"{question} [y/N]: ")
    return answer.strip().lower() in ("y", "yes")


def remove_in_cluster(target: KubeTarget, cluster_id: str, relay_url: str) -> list[str]:
    """Delete the agent's objects (reverse apply order, namespace last but
    one, cluster-scoped RBAC last). Returns ``"Kind name outcome"`` lines.

    An agent that was moved to another relay is left alone: deleting the old
    registration must not take the cluster off the new relay.

    Raises:
        CliError: the Kubernetes cluster runs the agent of another cluster id.
    """
    found = read_in_cluster(target)
    if found is not None and found.cluster_id not in ("", "/", cluster_id):
        raise CliError(f"the Kubernetes cluster at {target.host} runs the agent of {found.cluster_id}, "
                       f"not {cluster_id}: check --kube-context")
    if found is not None and found.relay_url and found.relay_url.rstrip("/") != relay_url.rstrip("/"):
        return [f"agent left in place (it now connects to {found.relay_url})"]
    # Names and kinds are all that delete needs; the values do not matter.
    # With the central RBAC pair (absent ones are skipped as not found).
    objects = with_central_rbac_rights(build_manifests(AgentValues("x", "x", "https://x", "https://x")))
    order = [o for o in reversed(objects) if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")]
    order += [o for o in objects if o["kind"] == "Namespace"]
    order += [o for o in reversed(objects) if o["kind"] in ("ClusterRoleBinding", "ClusterRole")]
    lines: list[str] = remove_central_rbac_objects(target)
    kept_inside = False
    for obj in order:
        if obj["kind"] == "Namespace" and kept_inside:
            # Deleting a namespace deletes everything in it, ours or not.
            outcome = "left alone (it holds objects this install does not own)"
        else:
            outcome = _delete_if_ours(target, obj, cluster_id)
            kept_inside |= outcome.startswith("left alone") and bool(obj["metadata"].get("namespace"))
            if outcome == "absent" and obj["metadata"]["name"].endswith(CENTRAL_RBAC_SUFFIX):
                continue  # deployed without --enable-central-rbac: nothing to report
        lines.append(f"{obj['kind']} {obj['metadata']['name']} {outcome}")
    return lines


def remove_central_rbac_objects(target: KubeTarget) -> list[str]:
    """Delete every object the agent labelled as its own for central roles
    (bindings first, then the ClusterRoles they name). Returns one
    ``"central RBAC objects: N deleted"`` line, or none when there were none."""
    deleted = 0
    for plural in _CENTRAL_KINDS:
        page = target.request("GET", f"{_RBAC}/{plural}?labelSelector={quote(CENTRAL_OWNED_SELECTOR)}") or {}
        for item in page.get("items") or []:
            meta = item.get("metadata") or {}
            where = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
            if target.request("DELETE", f"{_RBAC}{where}/{plural}/{meta.get('name')}", body) is not None:
                deleted += 1
    return [f"central RBAC objects: {deleted} deleted"] if deleted else []


def _delete_if_ours(target: KubeTarget, obj: dict[str, Any], cluster_id: str) -> str:
    live = target.get(obj)
    if live is None:
        return "absent"
    owner = owner_of(live)
    manager = ((live.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL)
    if owner != cluster_id:
        return f"left alone ({f'owned by {owner}' if owner else 'not made by arcctl'})"
    if manager not in (None, MANAGED_BY_ARCCTL):
        return f"left alone (managed by {manager}: uninstall it there)"
    return target.delete(obj)


async def delete(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    group = args.group or config.resource_group
    cid = f"{group}/{args.name}"
    if not args.yes and not confirm(f"Delete cluster {cid}: its agent in the cluster and its registration?"):
        print("Nothing deleted.")
        return 1
    async with RelayApi(config, TokenSource(config.auth.for_relay())) as api:
        # Authorisation and existence first: a user without the right to
        # delete the registration (a viewer, say) must not get as far as
        # deleting objects in the cluster.
        try:
            await api.check_delete(group, args.name)
            registered = True
        except ClusterNotFound:
            if not args.force:
                raise
            registered = False
        try:
            from client.kube_apply import KubeTarget  # lazy: slow to import

            target = KubeTarget(args.kube_config, args.kube_context)
            try:
                lines = await asyncio.to_thread(remove_in_cluster, target, cid, config.relay_url)
            finally:
                target.close()
            print(f"[1/2] cluster: {', '.join(lines)}", flush=True)
        except CliError as err:
            if not args.force:
                raise CliError(f"{err}; nothing was deleted (use --force to remove only the "
                               "registration)") from None
            print(f"[1/2] cluster: skipped ({err}); a later 'arcctl connect' replaces the leftovers",
                  flush=True)
        if registered:
            await api.request("DELETE", api.cluster_path(group, args.name), what=f"cluster {cid}")
            print(f"[2/2] relay: registration of {cid} deleted", flush=True)
        else:
            print(f"[2/2] relay: {cid} was not registered", flush=True)
    print(f"Cluster {cid} deleted.")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``arcctl delete``."""
    return asyncio.run(delete(args))


def add_delete(sub: Subcommands) -> None:
    """Register ``arcctl delete`` (client.arcctl's COMMANDS table)."""
    p = add_command(
        sub, "delete", summary="remove a cluster's agent from the cluster and its registration",
        description="The agent's objects go first; if the cluster cannot be reached nothing is\n"
                    "deleted, unless --force, which removes the registration anyway.",
        examples=["arcctl delete -n edge-1 -g lab", "arcctl delete -n edge-1 -g lab -y",
                  "arcctl delete -n edge-1 -g lab -y --force   # the cluster is gone"])
    add_cluster_options(p)
    p.add_argument("--force", action="store_true",
                   help="remove the registration even when the cluster cannot be reached")
    p.add_argument("-y", "--yes", action="store_true",
                   help="do not ask for confirmation (needed when stdin is not a terminal)")
    add_common_options(p, output=False)
    p.set_defaults(func=cmd_delete)
