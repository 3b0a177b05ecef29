"""``arcctl role assign|list|delete|export|import``: role assignments at the relay.

Roles (relay/roles.py): ``cluster-user`` (connect), ``viewer`` (list/show),
``onboarding`` (register/delete clusters), ``admin`` (everything, including
role assignments), and the central Kubernetes roles ``kubernetes-viewer``,
``kubernetes-writer``, ``kubernetes-admin``, ``kubernetes-cluster-admin``
(enforced inside clusters that enabled central RBAC: docs/central-rbac.md).
Scopes: one cluster (``-n NAME [-g GROUP]``), a resource group (``-g GROUP``),
everything (``--scope /``), any of them spelled out with ``--scope``, and for
the Kubernetes roles one namespace
(``--scope /resourceGroups/RG/clusters/NAME/namespaces/NS``). The principal is
an object id (user or service principal) or a group id, as in the token's
``oid`` / ``groups`` claims, of one issuer (``--assignee-issuer``: needed when
the relay trusts several; an id of one issuer never matches another's token,
central Kubernetes roles included). A user name (``alice@contoso.example``)
is refused by the relay unless it matches names (docs/identity-providers.md).

``export`` prints every assignment the caller administers as one document
(JSON or YAML); ``import`` reads such a document back and PUTs each
assignment under its id, so exporting from one relay and importing into
another (or the same one after a database loss) is idempotent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from client.arcctl_options import add_common_options
from client.auth import TokenSource
from client.config import ClientConfig, load_config
from client.directory import looks_like_name, object_id_of
from client.errors import CliError, ConfigError, Forbidden
from client.output import render
from client.relay_client import RelayApi
from cmdline import Subcommands, add_command

__all__ = ["add_role", "export_document", "parse_import_document"]

ROLES = ("cluster-user", "viewer", "onboarding", "admin",
         "kubernetes-viewer", "kubernetes-writer", "kubernetes-admin", "kubernetes-cluster-admin")
PRINCIPAL_TYPES = ("User", "Group", "ServicePrincipal")
EXPORT_KIND = "RoleAssignmentList"
EXPORT_API_VERSION = "cluster-connect.dev/v1"
# An import file is a list of small records; anything bigger is the wrong file.
MAX_IMPORT_BYTES = 4 * 1024 * 1024
_FIELDS = ("principalId", "principalIssuer", "principalType", "role", "scope")


def _scope(args: argparse.Namespace, config: ClientConfig, *, required: bool) -> str | None:
    """The scope from ``--scope``, ``-n``/``-g``, or None when none was given."""
    if args.scope:
        if args.name or args.group:
            raise ConfigError("give either --scope or -n/-g, not both")
        return str(args.scope)
    if args.name:
        group = args.group or config.resource_group
        return f"/resourceGroups/{group}/clusters/{args.name}"
    if args.group:
        return f"/resourceGroups/{args.group}"
    if required:
        raise ConfigError("name the scope: -n CLUSTER [-g GROUP], -g GROUP, or --scope / for everything")
    return None


def assignment_id(principal_id: str, role: str, scope: str, issuer: str = "") -> str:
    """A stable id for (issuer, principal, role, scope): assigning twice is a
    no-op. Without an issuer the id is the one made before issuers were named."""
    who = f"{issuer}|{principal_id}" if issuer else principal_id
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cluster-connect:{who}|{role}|{scope}"))


def _path(aid: str) -> str:
    return f"/api/v1/roleAssignments/{quote(aid, safe='')}"


def _run(config: ClientConfig, body: Any) -> Any:
    async def go() -> Any:
        async with RelayApi(config, TokenSource(config.auth.for_relay())) as api:
            return await body(api)
    return asyncio.run(go())


async def _list(api: RelayApi, principal: str | None, scope: str | None,
                issuer: str | None = None) -> list[dict[str, Any]]:
    """The assignments the caller administers (at ``scope`` when given).

    Raises:
        Forbidden: the caller is admin nowhere (or not at ``scope``): the relay
            says so with 403 rather than an empty list.
    """
    params = {k: v for k, v in (("principalId", principal), ("principalIssuer", issuer), ("scope", scope)) if v}
    try:
        doc = await api.request("GET", "/api/v1/roleAssignments", params=params or None)
    except Forbidden:
        where = f"at scope {scope} (or a scope containing it)" if scope else "at some scope"
        raise Forbidden(f"reading role assignments needs the admin role {where}, and you have none: "
                        "ask an admin for it (arcctl role assign --role admin --assignee YOUR_OBJECT_ID "
                        f"--scope {scope or 'SCOPE'})") from None
    value = doc.get("value", []) if isinstance(doc, dict) else []
    return [dict(a) for a in value if isinstance(a, dict)]


def cmd_assign(args: argparse.Namespace) -> int:
    """``arcctl role assign --role R --assignee ID [--assignee-type T] SCOPE``."""
    config = load_config(args.config)
    scope = _scope(args, config, required=True)
    assert scope is not None
    issuer = args.assignee_issuer or ""
    assignee = args.assignee
    if args.assignee_type != "Group" and looks_like_name(assignee) and config.auth.directory_url:
        # A name can change hands; the assignment must name the immutable id.
        assignee = asyncio.run(object_id_of(config.auth, assignee))
        print(f"arcctl role assign: {args.assignee} is object id {assignee} "
              f"(from {config.auth.directory_url})", file=sys.stderr)
    aid = args.id or assignment_id(assignee, args.role, scope, issuer)
    spec = {"principalId": assignee, "principalType": args.assignee_type,
            "role": args.role, "scope": scope, **({"principalIssuer": issuer} if issuer else {})}

    async def body(api: RelayApi) -> Any:
        return await api.request("PUT", _path(aid), json=spec, what=f"role assignment {aid}")
    print(render(_run(config, body), args.output))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``arcctl role list [--assignee ID] [SCOPE]``: assignments the caller administers."""
    config = load_config(args.config)
    scope = _scope(args, config, required=False)

    async def body(api: RelayApi) -> list[dict[str, Any]]:
        return await _list(api, args.assignee, scope, args.assignee_issuer)
    print(render(_run(config, body), args.output))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``arcctl role delete --id ID`` or ``--assignee ID [--role R] [SCOPE]``."""
    config = load_config(args.config)
    scope = _scope(args, config, required=False)
    if not args.id and not args.assignee:
        raise ConfigError("name what to delete: --id ID, or --assignee ID [--role R] [-n/-g/--scope]")

    async def body(api: RelayApi) -> list[str]:
        if args.id:
            ids = [args.id]
        else:
            found = await _list(api, args.assignee, scope, args.assignee_issuer)
            ids = [a["id"] for a in found if not args.role or a.get("role") == args.role]
            if not ids:
                raise CliError(f"no role assignment of {args.assignee} matches"
                               + (f" role {args.role}" if args.role else "")
                               + (f" at scope {scope}" if scope else "")
                               + ": see 'arcctl role list'")
        for aid in ids:
            await api.request("DELETE", _path(aid), what=f"role assignment {aid}")
        return ids
    deleted = _run(config, body)
    print(render({"deleted": deleted}, args.output))
    return 0


def export_document(assignments: list[dict[str, Any]]) -> dict[str, Any]:
    """The export format: ``{apiVersion, kind, items: [{id, principalId, ...}]}``."""
    items = [{"id": a["id"], **{k: a.get(k) for k in _FIELDS if a.get(k) is not None}}
             for a in sorted(assignments, key=lambda a: str(a.get("id")))]
    return {"apiVersion": EXPORT_API_VERSION, "kind": EXPORT_KIND, "items": items}


def parse_import_document(text: str, source: str) -> list[dict[str, Any]]:
    """Assignments from an export document (JSON or YAML; a bare list works too).

    Raises:
        ConfigError: one line naming the first problem and where it is.
    """
    try:
        doc = yaml.safe_load(text)  # YAML 1.2 reads JSON as well
    except yaml.YAMLError:
        raise ConfigError(f"{source} is neither JSON nor YAML") from None
    items = doc.get("items") if isinstance(doc, dict) else doc
    if isinstance(doc, dict) and doc.get("kind") not in (None, EXPORT_KIND):
        raise ConfigError(f"{source}: kind {doc.get('kind')!r} is not {EXPORT_KIND}")
    if not isinstance(items, list):
        raise ConfigError(f"{source} must hold a list of role assignments (or {{items: [...]}})")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: item {i} is not a mapping")
        missing = [k for k in ("principalId", "role", "scope") if not item.get(k)]
        if missing:
            raise ConfigError(f"{source}: item {i} lacks {', '.join(missing)}")
        if item["role"] not in ROLES:
            raise ConfigError(f"{source}: item {i} has role {item['role']!r}; use one of {', '.join(ROLES)}")
        ptype = item.get("principalType") or "User"
        if ptype not in PRINCIPAL_TYPES:
            raise ConfigError(f"{source}: item {i} has principalType {ptype!r}; use one of "
                              f"{', '.join(PRINCIPAL_TYPES)}")
        principal, role, scope = str(item["principalId"]), str(item["role"]), str(item["scope"])
        issuer = str(item.get("principalIssuer") or "")
        out.append({"id": str(item.get("id") or assignment_id(principal, role, scope, issuer)),
                    "principalId": principal, "principalType": ptype, "role": role, "scope": scope,
                    **({"principalIssuer": issuer} if issuer else {})})
    return out


def cmd_export(args: argparse.Namespace) -> int:
    """``arcctl role export [-o json|yaml] [--file F]``."""
    config = load_config(args.config)

    async def body(api: RelayApi) -> list[dict[str, Any]]:
        return await _list(api, None, None)
    text = render(export_document(_run(config, body)), "yaml" if args.output == "yaml" else "json")
    if args.file and args.file != "-":
        Path(args.file).write_text(text + "\n")
    else:
        print(text)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """``arcctl role import --file F [--dry-run]``: PUT each assignment under its id."""
    config = load_config(args.config)
    source = "stdin" if args.file == "-" else str(args.file)
    try:
        text = sys.stdin.read(MAX_IMPORT_BYTES + 1) if args.file == "-" else \
            Path(args.file).read_text()[: MAX_IMPORT_BYTES + 1]
    except OSError as err:
        raise ConfigError(f"cannot read {source}: {err.strerror}") from None
    if len(text) > MAX_IMPORT_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_IMPORT_BYTES} bytes")
    items = parse_import_document(text, source)
    if args.dry_run:
        print(render({"wouldApply": items}, args.output))
        return 0

    async def body(api: RelayApi) -> dict[str, Any]:
        applied = []
        for item in items:
            spec = {k: item[k] for k in _FIELDS if k in item}
            await api.request("PUT", _path(item["id"]), json=spec, what=f"role assignment {item['id']}")
            applied.append(item["id"])
        return {"applied": applied}
    print(render(_run(config, body), args.output))
    return 0


SCOPE_NOTES = """\
scope: -n NAME [-g GROUP] is one cluster, -g GROUP a resource group, --scope /
everything (or spell any of them out with --scope). Roles: cluster-user (use
arc-proxy), viewer (list, show), onboarding (connect, delete), admin (all,
including role assignments)."""


def _common(p: argparse.ArgumentParser, *, scope: bool = True) -> None:
    if scope:
        p.add_argument("-n", "--name", metavar="NAME",
                       help="scope: this cluster (in -g GROUP, default from the client config)")
        p.add_argument("-g", "--resource-group", dest="group", metavar="GROUP",
                       help="scope: this resource group")
        p.add_argument("--scope", metavar="SCOPE", help="scope spelled out: '/', '/resourceGroups/RG', "
                       "'/resourceGroups/RG/clusters/NAME' or (kubernetes-* roles) "
                       "'/resourceGroups/RG/clusters/NAME/namespaces/NS'")
    add_common_options(p)


def add_role(sub: Subcommands) -> None:
    """Register ``arcctl role ...`` (an entry of ``client.arcctl.COMMANDS``)."""
    role = add_command(
        sub, "role", summary="manage who may do what at the relay (role assignments)",
        description="A role assignment gives a principal (a user's or service principal's object\n"
                    "id, or a group id, as in the token's oid and groups claims) a role at a scope.",
        examples=["arcctl role assign --role cluster-user --assignee OBJECT_ID -n edge-1 -g lab",
                  "arcctl role list -g lab -o table",
                  "arcctl role export -o yaml --file roles.yaml"],
        notes=SCOPE_NOTES)
    verbs = role.add_subparsers(dest="role_command", metavar="VERB", title="verbs")
    verbs.required = True

    p = add_command(verbs, "assign", summary="give a principal a role at a scope",
                    examples=["arcctl role assign --role cluster-user --assignee OBJECT_ID -n edge-1 -g lab",
                              "arcctl role assign --role viewer --assignee GROUP_ID --assignee-type Group "
                              "-g lab",
                              "arcctl role assign --role admin --assignee OBJECT_ID --scope /",
                              "arcctl role assign --role cluster-user --assignee OBJECT_ID "
                              "--assignee-issuer partner -g lab"],
                    notes=SCOPE_NOTES)
    p.add_argument("--role", required=True, choices=ROLES, help="the role to give")
    p.add_argument("--assignee", required=True, metavar="ID",
                   help="object id of a user or service principal, or a group id")
    p.add_argument("--assignee-type", default="User", choices=PRINCIPAL_TYPES,
                   help="what the assignee id names (default User)")
    p.add_argument("--assignee-issuer", metavar="ISSUER",
                   help="the assignee's issuer: its URL or the alias the relay gives it (needed when "
                        "the relay trusts several issuers; default: the relay's only issuer)")
    p.add_argument("--id", metavar="ID",
                   help="the assignment's id (default: derived from assignee, role and scope, "
                        "so assigning twice changes nothing)")
    _common(p)
    p.set_defaults(func=cmd_assign)

    p = add_command(verbs, "list", summary="list the role assignments you administer",
                    examples=["arcctl role list", "arcctl role list --assignee OBJECT_ID -o table",
                              "arcctl role list -n edge-1 -g lab"],
                    notes=SCOPE_NOTES)
    p.add_argument("--assignee", metavar="ID", help="only the assignments of this principal")
    p.add_argument("--assignee-issuer", metavar="ISSUER",
                   help="only principals of this issuer (its URL or the relay's alias for it)")
    _common(p)
    p.set_defaults(func=cmd_list)

    p = add_command(verbs, "delete", summary="delete role assignments, by id or by principal",
                    examples=["arcctl role delete --id ASSIGNMENT_ID",
                              "arcctl role delete --assignee OBJECT_ID --role viewer -g lab"],
                    notes=SCOPE_NOTES)
    p.add_argument("--id", metavar="ID", help="the assignment's id (see 'arcctl role list')")
    p.add_argument("--assignee", metavar="ID",
                   help="every assignment of this principal (narrowed by --role and the scope)")
    p.add_argument("--role", choices=ROLES, help="with --assignee: only assignments of this role")
    p.add_argument("--assignee-issuer", metavar="ISSUER",
                   help="with --assignee: only that principal of this issuer (URL or relay alias)")
    _common(p)
    p.set_defaults(func=cmd_delete)

    p = add_command(verbs, "export", summary="print every assignment you administer as one document",
                    description="The document (JSON, or YAML with -o yaml) is what 'arcctl role import'\n"
                                "reads: export from one relay, import into another.",
                    examples=["arcctl role export -o yaml --file roles.yaml"])
    p.add_argument("--file", metavar="FILE", help="write the document here (default: stdout)")
    _common(p, scope=False)
    p.set_defaults(func=cmd_export)

    p = add_command(verbs, "import", summary="create or update assignments from an export document",
                    description="Each assignment is written under its id, so importing twice changes\n"
                                "nothing.",
                    examples=["arcctl role import --file roles.yaml --dry-run",
                              "arcctl role import --file roles.yaml"])
    p.add_argument("--file", required=True, metavar="FILE",
                   help="the JSON or YAML export document ('-': read stdin)")
    p.add_argument("--dry-run", action="store_true", help="check and print the assignments, change nothing")
    _common(p, scope=False)
    p.set_defaults(func=cmd_import)
