"""``arcctl connect``: register a cluster at the relay and deploy its agent.

Theory of operation (each step prints one progress line):

1. Read the registration at the relay and, in the cluster of the kubeconfig
   context, the agent's Secret and ConfigMap left by an earlier connect.
2. Decide the keys. A registration whose certificate matches the Secret's:
   reuse everything (a second run changes nothing). A registration with another
   certificate: refuse, the name belongs to another agent. No registration but a
   Secret of the same cluster written for another relay: reuse the key (moving to
   a new relay). Anything else left in the cluster is a leftover (e.g. after
   ``delete --force``): fresh keys, and the objects are overwritten.
3. Check ownership: every object carries the install that owns it (the
   cluster id, ``client.manifests.OWNER_ANNOTATION``). An object that exists and
   belongs to another install, or to nobody, is not taken over: connect stops
   before changing anything, naming each one, unless ``--adopt`` is given. A
   namespace that exists and is not ours is used as it is, never relabelled.
4. Apply Namespace and Secret, then register (so a registration never names a
   key that is not stored in the cluster), then the other objects.

``--helm-values FILE`` registers without touching any cluster and writes the
chart's values, keys included (mode 0600), for ``helm install -f FILE``; run
again with the same FILE, it reuses the keys in it. ``--dry-run`` touches
nothing and says on stderr what its output leaves out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jwt
import yaml

from certs import CertificateAuthority, fingerprint_sha256, generate_key_pair, write_secret_file
from client.arcctl_central_rbac import set_central_rbac, with_central_rbac_rights
from client.arcctl_options import add_cluster_options, add_common_options
from client.auth import TokenSource
from client.config import ClientConfig, load_config
from client.errors import AgentOffline, CliError, ClusterNotFound, ConfigError, Forbidden
from client.issuer_spec import IssuerSpec, parse_issuer_spec
from client.manifests import (
    AGENT_NAME,
    NAMESPACE,
    OWNER_ANNOTATION,
    SECRET_KEYS,
    AgentValues,
    OidcIssuerValues,
    build_manifests,
    dump_manifests,
)
from client.relay_client import RelayApi
from cmdline import Subcommands, add_command

if TYPE_CHECKING:
    from client.kube_apply import KubeTarget

__all__ = ["add_connect", "cmd_connect", "owner_of", "plan_ownership", "tls_server_name"]

SECRET_REF = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": AGENT_NAME, "namespace": NAMESPACE}}
CONFIGMAP_REF = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": AGENT_NAME, "namespace": NAMESPACE}}
STEPS = 6
# The wait for Connected: its default bound (as az connectedk8s), how often it
# asks the relay, and how often it says it is still waiting (seconds).
WAIT_TIMEOUT = 120.0
WAIT_POLL_INTERVAL = 1.0
WAIT_PROGRESS_EVERY = 15.0


def tls_server_name(resource_group: str, name: str) -> str:
    """The name kube-aad-proxy's serving certificate is issued for; arc-proxy
    writes it as the kubeconfig's ``tls-server-name``."""
    return f"{name}.{resource_group}.kube-aad-proxy.cluster-connect.local"


def onboarding_forbidden(resource_group: str, name: str, object_id: str) -> Forbidden:
    """What connect says when the relay refuses it: the role and scope it needs.

    Connect reads and writes the registration, which the ``onboarding`` role
    (or ``admin``) allows at the cluster's scope or any scope containing it; a
    registration that does not exist yet is normal here, so the line never
    suggests a wrong name.
    """
    scope = f"/resourceGroups/{resource_group}/clusters/{name}"
    return Forbidden(
        f"arcctl connect needs the onboarding role at scope {scope} or /resourceGroups/{resource_group} "
        f"(you have neither); ask an admin to run: arcctl role assign --role onboarding --assignee "
        f"{object_id or 'YOUR_OBJECT_ID'} -g {resource_group}")


async def _get_registration(api: RelayApi, resource_group: str, name: str,
                            object_id: str) -> dict[str, Any] | None:
    """The registration, None when there is none yet.

    Raises:
        Forbidden: the caller may not read it (no onboarding role): which role where.
    """
    try:
        return await api.get_cluster(resource_group, name)
    except ClusterNotFound:
        return None
    except Forbidden:
        raise onboarding_forbidden(resource_group, name, object_id) from None


async def _put_registration(api: RelayApi, resource_group: str, name: str, spec: dict[str, Any],
                            object_id: str) -> None:
    try:
        await api.put_cluster(resource_group, name, spec)
    except Forbidden:  # e.g. a viewer: may read the registration, not write it
        raise onboarding_forbidden(resource_group, name, object_id) from None


def _say(step: int, text: str) -> None:
    print(f"[{step}/{STEPS}] {text}", flush=True)


def _read_file(path: str | None, what: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {what} {path}: {getattr(err, 'strerror', None) or err}; "
                          "fix the path") from None


@dataclass(frozen=True)
class InCluster:
    """What an earlier connect left in the cluster."""

    secret: dict[str, str]       # Secret key -> decoded text
    relay_url: str               # from the ConfigMap's agent.yaml
    cluster_id: str              # "rg/name" from the ConfigMap


def read_in_cluster(target: KubeTarget) -> InCluster | None:
    """The agent Secret/ConfigMap in ``arc-system``, or None when there is no Secret."""
    live = target.get(SECRET_REF)
    if live is None:
        return None
    secret = {k: base64.b64decode(v or "").decode(errors="replace")
              for k, v in (live.get("data") or {}).items()}
    relay_url, cid = "", ""
    cm = target.get(CONFIGMAP_REF)
    if cm is not None:
        try:
            doc = yaml.safe_load((cm.get("data") or {}).get("agent.yaml") or "") or {}
            relay_url = str((doc.get("relay") or {}).get("url") or "")
            cluster = doc.get("cluster") or {}
            cid = f"{cluster.get('resource_group', '')}/{cluster.get('name', '')}"
        except (yaml.YAMLError, AttributeError):
            pass
    return InCluster(secret, relay_url, cid)


def _same_pem(a: str, b: str) -> bool:
    return bool(a.strip()) and a.strip() == b.strip()


def fresh_keys(values: AgentValues) -> AgentValues:
    """A new agent key pair, serving CA and kube-aad-proxy serving certificate.
    The CA's key is dropped: nothing needs to issue from it again."""
    cid = f"{values.resource_group}/{values.cluster_name}"
    agent = generate_key_pair(cid)
    ca = CertificateAuthority.create(f"{cid} serving CA")
    serving = ca.issue_server([tls_server_name(values.resource_group, values.cluster_name)], ["127.0.0.1"])
    return replace(values, agent_key=agent.private_key_pem.decode(), agent_cert=agent.certificate_pem.decode(),
                   serving_cert=serving.certificate_pem.decode(), serving_key=serving.private_key_pem.decode(),
                   serving_ca=ca.certificate_pem.decode())


def _reuse_keys(values: AgentValues, found: InCluster) -> AgentValues:
    s = found.secret
    return replace(values, agent_key=s.get("agent.key", ""), agent_cert=s.get("agent.crt", ""),
                   serving_cert=s.get("serving.crt", ""), serving_key=s.get("serving.key", ""),
                   serving_ca=s.get("serving-ca.crt", ""))


def choose_keys(values: AgentValues, registration: dict[str, Any] | None,
                found: InCluster | None, relay_url: str) -> tuple[AgentValues, str]:
    """Step 2 of the theory above; returns the values with keys and a note.

    Raises:
        CliError: the name is registered with another agent's key.
    """
    cid = f"{values.resource_group}/{values.cluster_name}"
    complete = found is not None and all(found.secret.get(k, "").strip() for k in
                                         ("agent.key", "agent.crt", "serving.crt", "serving.key"))
    if registration is not None:
        registered = str(registration.get("agentPublicKeyCertificate") or "")
        if found is not None and complete and _same_pem(found.secret.get("agent.crt", ""), registered):
            return _reuse_keys(values, found), "reusing the agent key stored in the cluster"
        raise CliError(f"cluster {cid} is already registered at the relay with another agent key: choose "
                       f"another name, or remove it first with 'arcctl delete -n {values.cluster_name} "
                       f"-g {values.resource_group}'")
    if found is not None and complete and found.cluster_id == cid and found.relay_url \
            and found.relay_url.rstrip("/") != relay_url.rstrip("/"):
        return _reuse_keys(values, found), f"reusing the agent key of {cid} (moving from {found.relay_url})"
    note = "generated a new agent key pair and serving certificate"
    if found is not None:
        note += " (replacing leftovers of an earlier registration)"
    return fresh_keys(values), note


def owner_of(live: dict[str, Any]) -> str:
    """The install that owns a live object ("" when none: made by hand or by an old arcctl)."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(OWNER_ANNOTATION) or "")


def _describe(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta['namespace'] + '/' if meta.get('namespace') else ''}{meta['name']}"


def plan_ownership(target: KubeTarget, manifests: list[dict[str, Any]], cid: str,
                   adopt: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Step 3 of the theory above: the objects to apply, and notes.

    Raises:
        CliError: an object exists that another install or nobody owns (without ``adopt``).
    """
    apply: list[dict[str, Any]] = []
    notes: list[str] = []
    foreign: list[str] = []
    for obj in manifests:
        live = target.get(obj)
        owner = owner_of(live) if live is not None else cid
        if owner == cid or adopt:
            apply.append(obj)
            if owner != cid:
                notes.append(f"took over {_describe(obj)} (owner: {owner or 'none'})")
        elif obj["kind"] == "Namespace":
            notes.append(f"{_describe(obj)} exists and is not ours: used as it is")
        else:
            foreign.append(f"{_describe(obj)} ({f'owned by {owner}' if owner else 'not made by arcctl'})")
    if foreign:
        raise CliError(f"refusing to take over objects that {cid} does not own: {', '.join(foreign)}; "
                       "remove the install that owns them (arcctl delete -n NAME -g GROUP), or pass --adopt "
                       "to take them over")
    return apply, notes


def _summary(manifests: list[dict[str, Any]], outcomes: Sequence[str]) -> str:
    return ", ".join(f"{m['kind']} {m['metadata']['name']} {o}" for m, o in zip(manifests, outcomes,
                                                                               strict=True))


def _registration_spec(values: AgentValues, location: str) -> dict[str, Any]:
    return {
        "location": location,
        "agentPublicKeyCertificate": values.agent_cert,
        "servingCaCertificate": values.serving_ca,
        "tlsServerName": tls_server_name(values.resource_group, values.cluster_name),
    }


async def _token_claims(tokens: TokenSource) -> dict[str, Any]:
    token = await tokens.get()
    try:
        # Only to learn which issuer the user signs in with; the relay and
        # kube-aad-proxy verify signatures, we do not need to.
        return dict(jwt.decode(token, options={"verify_signature": False}))
    except jwt.PyJWTError:
        return {}


def base_values(args: argparse.Namespace, config: ClientConfig, group: str,
                claims: dict[str, Any]) -> AgentValues:
    """Values from the flags and the client config (no keys yet)."""
    specs = [parse_issuer_spec(v) for v in args.oidc_issuer or ()]
    first = specs[0] if specs else IssuerSpec(str(claims.get("iss") or ""))
    if not first.issuer:
        raise ConfigError("cannot tell which OIDC issuer kube-aad-proxy should trust: pass --oidc-issuer URL")
    aud = claims.get("aud")
    # The claims are the relay's token's: with auth.relay_scope its aud is the
    # relay's own, which no cluster may accept; the clusters' is auth.scope's.
    audience = args.oidc_audience or config.auth.cluster_audience() \
        or (aud[0] if isinstance(aud, list) and aud else aud) or "api://cluster-connect"
    extra = tuple(OidcIssuerValues(
        s.issuer, s.audience or str(audience), _read_file(s.ca_file, f"CA file of issuer {s.issuer}"),
        s.alias, s.username_prefix, s.groups_prefix) for s in specs[1:])
    return AgentValues(
        cluster_name=args.name, resource_group=group, relay_url=config.relay_url,
        oidc_issuer=first.issuer, oidc_audience=first.audience or str(audience), image=args.image,
        oidc_naming=first.naming(), extra_issuers=extra,
        proxy_https=args.proxy_https or "", proxy_http=args.proxy_http or "",
        no_proxy=args.proxy_skip_range or "",
        relay_ca=_read_file(config.relay_ca_file, "relay CA file"),
        proxy_ca=_read_file(args.proxy_cert, "proxy CA file"),
        oidc_ca=_read_file(first.ca_file or config.auth.ca_file, "OIDC issuer CA file"),
    )


def unreachable_relay_reason(relay_url: str) -> str | None:
    """Why a pod could not reach ``relay_url`` (loopback, link-local), or None."""
    host = urlsplit(relay_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return "is a loopback name"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return "is a loopback address"
    if address.is_link_local:
        return "is a link-local address"
    return None


def _warn(text: str) -> None:
    print(f"arcctl connect: warning: {text}", file=sys.stderr, flush=True)


def _warn_unreachable_relay(relay_url: str) -> None:
    reason = unreachable_relay_reason(relay_url)
    if reason:
        _warn(f"the relay URL {relay_url} {reason}: an agent inside a cluster cannot reach it; set "
              "relay.url in the client config to an address the cluster can reach")


def _values_from_helm_file(path: Path) -> dict[str, str]:
    """The secret.* values of an earlier ``--helm-values`` run, or {} when there is none."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read Helm values {path}: {err}; remove it or choose another file") from None
    secret = (doc or {}).get("secret") if isinstance(doc, dict) else None
    return {str(k): str(v) for k, v in secret.items()} if isinstance(secret, dict) else {}


def helm_values(values: AgentValues) -> dict[str, Any]:
    """The chart's values (deploy/helm/cluster-connect-agent) for ``values``."""
    from client.manifests_chart import VALUE_PATHS  # the chart's layout, one source

    tree: dict[str, Any] = {}
    for name, path in VALUE_PATHS.items():
        node = tree
        *parents, leaf = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        value = getattr(values, name)
        node[leaf] = [dict(v) for v in value] if isinstance(value, tuple) else \
            (dict(value) if isinstance(value, dict) else value)
    return tree


def _helm_values_of(values: AgentValues, central_rbac: bool) -> dict[str, Any]:
    """The values file's content; with ``--enable-central-rbac`` the chart also
    grants the agent the rights that mode needs, as a plain connect applies them."""
    from client.manifests_chart import CENTRAL_RBAC_VALUE

    tree = helm_values(values)
    if central_rbac:
        section, key = CENTRAL_RBAC_VALUE.split(".")
        tree.setdefault(section, {})[key] = True
    return tree


async def _register_for_helm(args: argparse.Namespace, api: RelayApi, values: AgentValues, cid: str,
                             object_id: str) -> int:
    path = Path(args.helm_values).expanduser()
    earlier = _values_from_helm_file(path)
    registration = await _get_registration(api, values.resource_group, values.cluster_name, object_id)
    _say(1, f"relay: cluster {cid} " + ("is registered" if registration else "is not registered yet"))
    registered = str((registration or {}).get("agentPublicKeyCertificate") or "")
    if registration is not None and not _same_pem(earlier.get("agentCert", ""), registered):
        raise CliError(f"cluster {cid} is already registered at the relay with an agent key that {path} does "
                       f"not hold: pass the values file of its first registration, or remove it first with "
                       f"'arcctl delete -n {values.cluster_name} -g {values.resource_group}'")
    if registration is not None:
        values = replace(values, agent_key=earlier.get("agentKey", ""), agent_cert=earlier.get("agentCert", ""),
                         serving_cert=earlier.get("servingCert", ""), serving_key=earlier.get("servingKey", ""),
                         serving_ca=earlier.get("servingCaCert", ""))
        _say(2, f"keys: reusing the agent key in {path}")
    else:
        values = fresh_keys(values)
        _say(2, "keys: generated a new agent key pair and serving certificate")
    location = args.location if args.location is not None else str((registration or {}).get("location") or "")
    spec = _registration_spec(values, location)
    # Values first: a registration must never name a key that is stored nowhere.
    text = ("# Helm values written by `arcctl connect --helm-values`: they hold the agent's private\n"
            "# key; keep this file secret. Install: helm install arc-agent "
            "deploy/helm/cluster-connect-agent -n arc-system --create-namespace -f " + str(path) + "\n"
            + yaml.safe_dump(_helm_values_of(values, args.enable_central_rbac), sort_keys=False, width=10_000))
    try:
        write_secret_file(path, text)
    except OSError as err:
        raise ConfigError(f"cannot write Helm values {path}: {err.strerror or err}; choose another path") from None
    _say(3, f"wrote {path} (mode 0600: it holds the agent's private key)")
    if registration is not None and all(registration.get(k) == v for k, v in spec.items()):
        _say(4, f"relay: registration of {cid} unchanged")
    else:
        await _put_registration(api, values.resource_group, values.cluster_name, spec, object_id)
        _say(4, f"relay: {'updated' if registration else 'registered'} {cid}")
    print(f"Cluster {cid} is registered at {values.relay_url}. Deploy its agent with: helm install arc-agent "
          f"deploy/helm/cluster-connect-agent -n arc-system --create-namespace -f {path}")
    _print_ca_fingerprint(cid, values.serving_ca)
    return 0


def _manifests(args: argparse.Namespace, values: AgentValues) -> list[dict[str, Any]]:
    """The agent's objects; with --enable-central-rbac, plus the RBAC rights central roles need."""
    manifests = build_manifests(values)
    return with_central_rbac_rights(manifests) if args.enable_central_rbac else manifests


def _print_ca_fingerprint(cid: str, serving_ca: str) -> None:
    """The fingerprint arc-proxy pins, for the admin to hand out of band."""
    if serving_ca:
        fp = fingerprint_sha256(serving_ca.encode())
        print(f"Serving CA of {cid}: sha256:{fp} (users may pass it as arc-proxy --ca-fingerprint)", flush=True)


async def connect(args: argparse.Namespace) -> int:
    """The whole command (see the module docstring)."""
    config = load_config(args.config)
    group = args.group or config.resource_group
    cid = f"{group}/{args.name}"
    tokens = TokenSource(config.auth.for_relay())
    claims = {} if args.oidc_issuer and args.oidc_audience else await _token_claims(tokens)
    values = base_values(args, config, group, claims)
    if args.helm_values and (values.extra_issuers or values.oidc_naming):
        # The chart's values hold one issuer and no prefixes: refuse rather than drop some silently.
        raise ConfigError("--helm-values takes one --oidc-issuer without alias=/username_prefix=/groups_prefix=: "
                          "the chart trusts one issuer; for several, deploy with arcctl connect (no "
                          "--helm-values) or add them to kube_aad_proxy.oidc.issuers in the agent config")
    if args.dry_run:
        # Keys are made and registered only by a real connect; the Secret's data stays empty.
        print(dump_manifests(_manifests(args, values)), end="")
        empty = ", ".join(k for k, name in SECRET_KEYS.items() if not getattr(values, name))
        _warn(f"dry run: nothing was registered or applied; the Secret's {empty} are empty because keys are "
              "generated and registered only by a real connect (or by --helm-values FILE)")
        _warn_unreachable_relay(values.relay_url)
        return 0
    # Whom to name in a "needs the onboarding role" line (role assignments name the oid).
    object_id = str((claims or await _token_claims(tokens)).get("oid") or "")
    if args.helm_values:
        _warn_unreachable_relay(values.relay_url)
        async with RelayApi(config, tokens) as helm_api:
            status = await _register_for_helm(args, helm_api, values, cid, object_id)
            if status == 0 and args.enable_central_rbac:
                await set_central_rbac(helm_api, group, args.name, True)
            return status
    async with RelayApi(config, tokens) as api:
        registration = await _get_registration(api, group, args.name, object_id)
        _say(1, f"relay {config.relay_url}: cluster {cid} "
                + ("is registered" if registration else "is not registered yet"))
        from client.kube_apply import KubeTarget  # lazy: the kubernetes package is slow to import

        target = KubeTarget(args.kube_config, args.kube_context)
        # A cluster whose API server is itself on loopback is a local one (the
        # demo's sandbox runs its agent beside the relay): no warning there.
        if unreachable_relay_reason(target.host) is None:
            _warn_unreachable_relay(values.relay_url)
        try:
            found = await asyncio.to_thread(read_in_cluster, target)
            _say(2, f"cluster {target.host} (context {target.context or '-'}): "
                    + ("found an agent Secret" if found else "no agent installed yet"))
            values, note = choose_keys(values, registration, found, config.relay_url)
            manifests, owned = await asyncio.to_thread(plan_ownership, target, _manifests(args, values), cid,
                                                       args.adopt)
            fp = fingerprint_sha256(values.agent_cert.encode())
            _say(3, f"keys: {note} (agent certificate sha256 {fp[:16]}...)"
                    + "".join(f"; {n}" for n in owned))
            first = 2 if manifests[0]["kind"] == "Namespace" else 1
            outcomes = [await asyncio.to_thread(target.apply, m) for m in manifests[:first]]
            _say(4, f"cluster: {_summary(manifests[:first], outcomes)}")
            location = args.location if args.location is not None else \
                str((registration or {}).get("location") or "")
            spec = _registration_spec(values, location)
            if registration is not None and all(registration.get(k) == v for k, v in spec.items()):
                _say(5, f"relay: registration of {cid} unchanged")
            else:
                await _put_registration(api, group, args.name, spec, object_id)
                _say(5, f"relay: {'updated' if registration else 'registered'} {cid}")
            if args.enable_central_rbac:
                switched = await set_central_rbac(api, group, args.name, True)
                _say(5, f"relay: central Kubernetes roles {'enabled' if switched.get('changed') else 'already enabled'}"
                        f" for {cid}")
            rest = [await asyncio.to_thread(target.apply, m) for m in manifests[first:]]
            summary = _summary(manifests[first:], rest)
            config_changed = any(o == "updated" for m, o in zip(manifests, outcomes + rest, strict=True)
                                 if m["kind"] in ("Secret", "ConfigMap"))
            if config_changed and rest[-1] == "unchanged":
                await asyncio.to_thread(target.restart, manifests[-1])
                summary += " (restarted: its Secret/ConfigMap changed)"
            _say(6, f"cluster: {summary}")
            outcomes += rest
        finally:
            target.close()
        changed = any(o != "unchanged" for o in outcomes)
        print(f"Cluster {cid} is registered at {config.relay_url} and its agent is deployed"
              + ("" if changed else " (nothing changed)")
              + f". Check it with: arcctl show -n {args.name} -g {group}", flush=True)
        _print_ca_fingerprint(cid, values.serving_ca)
        if not args.no_wait:
            await wait_connected(api, group, args.name, args.wait_timeout, config.relay_url)
    return 0


async def wait_connected(api: RelayApi, resource_group: str, name: str, timeout: float,
                         relay_url: str) -> None:
    """Poll the registration until the agent is ``Connected``, as ``az
    connectedk8s connect`` does, with a progress line now and then.

    Raises:
        AgentOffline: not connected within ``timeout`` seconds; the
            registration and the cluster objects stay.
    """
    cid = f"{resource_group}/{name}"
    print(f"Waiting up to {timeout:g} s for the agent of {cid} to connect (--no-wait skips this)",
          flush=True)
    loop = asyncio.get_running_loop()
    start = loop.time()
    next_progress = start + WAIT_PROGRESS_EVERY
    status = ""
    while True:
        reg = await api.get_cluster(resource_group, name, command="arcctl connect", role="onboarding")
        status = str(reg.get("connectivityStatus") or "")
        now = loop.time()
        if status == "Connected":
            print(f"Agent of {cid} is Connected (after {now - start:.0f} s)", flush=True)
            return
        if now - start >= timeout:
            break
        if now >= next_progress:
            print(f"  still {status or 'not connected'} after {now - start:.0f} s", flush=True)
            next_progress += WAIT_PROGRESS_EVERY
        await asyncio.sleep(min(WAIT_POLL_INTERVAL, max(0.0, start + timeout - now)))
    raise AgentOffline(
        f"the agent of {cid} did not connect within {timeout:g} s (status {status or 'unknown'}); the "
        f"registration and the cluster objects stay. Likely causes: its image cannot be pulled, the cluster "
        f"cannot reach the relay at {relay_url}, or it needs a proxy (--proxy-https). Look with: kubectl -n "
        f"{NAMESPACE} logs deploy/{AGENT_NAME}; then 'arcctl show -n {name} -g {resource_group}'")


def cmd_connect(args: argparse.Namespace) -> int:
    """``arcctl connect``."""
    return asyncio.run(connect(args))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 86400")
    return value


def add_connect(sub: Subcommands) -> None:
    """Register ``arcctl connect`` (client.arcctl's COMMANDS table)."""
    p = add_command(
        sub, "connect", summary="register a cluster at the relay and deploy its agent into it",
        description="The agent goes to the cluster of the current kubeconfig context (or\n"
                    "--kube-context). Running it again changes nothing; a cluster moved to a new\n"
                    "relay keeps its agent key. It takes over no object that another install or\n"
                    "nobody owns (--adopt to force). Then it waits until the agent is Connected\n"
                    "(--wait-timeout, --no-wait). --dry-run prints the manifests instead;\n"
                    "--helm-values registers and writes the Helm chart's values instead.",
        examples=["arcctl connect -n edge-1 -g lab --location westeurope",
                  "arcctl connect -n edge-1 -g lab --kube-context edge-1-admin",
                  "arcctl connect -n edge-1 -g lab --proxy-https http://proxy.corp:3128 "
                  "--proxy-skip-range 10.0.0.0/8,.svc --proxy-cert corp-ca.pem",
                  "arcctl connect -n edge-1 -g lab --dry-run > agent.yaml"])
    add_cluster_options(p)
    p.add_argument("--location", metavar="LOCATION",
                   help="a location recorded with the registration (free text, e.g. westeurope)")
    p.add_argument("--proxy-https", metavar="URL",
                   help="HTTPS proxy the agent dials the relay through, e.g. http://proxy:3128")
    p.add_argument("--proxy-http", metavar="URL", help="HTTP proxy, used when no HTTPS proxy is set")
    p.add_argument("--proxy-skip-range", metavar="LIST",
                   help="comma-separated CIDRs and host suffixes the agent reaches without the proxy")
    # The two spellings of az connectedk8s; the later one on the command line wins.
    p.add_argument("--proxy-cert", "--custom-ca-cert", dest="proxy_cert", metavar="FILE",
                   help="an extra CA (PEM) the agent trusts: a TLS-inspecting proxy's, or the relay's")
    p.add_argument("--oidc-issuer", metavar="URL[,KEY=VALUE...]", action="append",
                   help="token issuer kube-aad-proxy trusts (default: the issuer of your token); repeat "
                        "for several, each with its own audience=, ca_file=, alias=, username_prefix=, "
                        "groups_prefix= (several issuers: names are prefixed '<alias>:' by default)")
    p.add_argument("--oidc-audience", metavar="AUDIENCE",
                   help="token audience kube-aad-proxy expects of an issuer without audience= "
                        "(default: the audience of your token)")
    default_image = AgentValues.__dataclass_fields__["image"].default
    p.add_argument("--image", default=default_image, metavar="IMAGE",
                   help=f"agent container image (default {default_image})")
    p.add_argument("--enable-central-rbac", action="store_true",
                   help="enforce the central Kubernetes roles assigned at the relay in this cluster "
                        "(docs/central-rbac.md; off again: arcctl update --central-rbac off)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once the agent is deployed, without waiting until it is Connected")
    p.add_argument("--wait-timeout", type=_seconds, default=WAIT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for the agent to be Connected (default {WAIT_TIMEOUT:g}); "
                        "when it is not, exit 7 and keep the registration and the objects")
    p.add_argument("--adopt", action="store_true",
                   help="take over agent objects that exist in the cluster but another install (or nobody) owns")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the manifests (YAML) on stdout and say on stderr what they leave out; "
                           "register nothing, deploy nothing")
    mode.add_argument("--helm-values", metavar="FILE",
                      help="register at the relay and write the Helm chart's values (with the agent's keys, "
                           "mode 0600) to FILE instead of deploying; run again with the same FILE to reuse them")
    add_common_options(p, output=False)
    p.set_defaults(func=cmd_connect)
