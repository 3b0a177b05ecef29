"""The agent's central RBAC list (issue 18, item 3's failure modes): a bad or
too large list is refused and the previous one kept; a list not confirmed
within the staleness bound grants nothing; a disabled cluster grants nothing;
the groups of a user's own and its groups' assignments are found."""

from __future__ import annotations

import json
from typing import Any

from agent.central_rbac import MAX_FEED_BYTES, OFF, STALE, CentralRbac
from agent.central_rbac_objects import desired_objects
from agent.kube_aad_proxy.names import NameMapper, NamePrefixes

CID = "rg1/alpha"
ISS = "https://idp.example"
# One trusted issuer: its names carry no prefix (identity/issuer_names.py).
ONE_ISSUER = NameMapper({ISS: NamePrefixes()})


def _doc(*assignments: dict[str, Any], enabled: bool = True, **overrides: Any) -> bytes:
    doc = {"version": 2, "cluster": CID, "enabled": enabled, "assignments": list(assignments), **overrides}
    return json.dumps(doc).encode()


def _a(aid: str, pid: str, role: str = "kubernetes-viewer", ptype: str = "User",
       namespace: str | None = None, issuer: str = ISS) -> dict[str, Any]:
    return {"id": aid, "principalId": pid, "principalIssuer": issuer, "principalType": ptype, "role": role,
            "namespace": namespace}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_agent_central_rbac_groups_of_user_and_group_assignments() -> None:
    """A user gets the central groups of its own assignments and of its
    groups' assignments, once each; someone else gets none (audit ``-``)."""
    central = CentralRbac(CID, None, names=ONE_ISSUER)
    assert central.receive(_doc(_a("1", "u1"), _a("2", "u1", "kubernetes-writer", namespace="ns"),
                                _a("3", "g1", "kubernetes-admin", "Group"))) == "ok"
    groups, said = central.groups_for(ISS, ["u1"], ["g1", "g2"])
    assert groups == ("arc-central:user:u1", "arc-central:group:g1")
    assert said == "arc-central:user:u1,arc-central:group:g1"
    assert central.groups_for(ISS, ["u2"], ["g2"]) == ((), "-")


def test_agent_central_rbac_refuses_bad_lists_and_keeps_the_previous() -> None:
    """Too large, not JSON, another version, another cluster, a bad role or
    type: each answered ``refused: why``, the accepted list unchanged."""
    central = CentralRbac(CID, None, names=ONE_ISSUER)
    assert central.receive(_doc(_a("1", "u1"))) == "ok"
    bad = [b"x" * (MAX_FEED_BYTES + 1), b"{not json", _doc(version=1), _doc(cluster="rg1/beta"),
           _doc(_a("2", "u2", role="cluster-user")), _doc(_a("2", "u2", ptype="Robot")),
           _doc(_a("2", "u 2")), _doc({"id": "2", "principalId": "u2", "principalType": "User",
                                        "role": "kubernetes-viewer", "namespace": None}),
           json.dumps([1]).encode()]
    for data in bad:
        assert central.receive(data).startswith("refused: "), data[:60]
    assert central.lists_refused == len(bad)
    assert central.groups_for(ISS, ["u1"], [])[0] == ("arc-central:user:u1",)
    assert central.groups_for(ISS, ["u2"], [])[0] == ()


def test_agent_central_rbac_fails_closed_after_the_staleness_bound() -> None:
    """Fresh: groups; older than the bound: none and ``stale``; a new list
    (the relay's re-send after a reconnect): groups again."""
    clock = Clock()
    central = CentralRbac(CID, None, max_staleness=90, clock=clock, names=ONE_ISSUER)
    central.receive(_doc(_a("1", "u1")))
    clock.now += 89
    assert central.groups_for(ISS, ["u1"], [])[0] == ("arc-central:user:u1",)
    clock.now += 2
    assert central.groups_for(ISS, ["u1"], []) == ((), STALE)
    central.receive(_doc(_a("1", "u1")))
    assert central.groups_for(ISS, ["u1"], [])[0] == ("arc-central:user:u1",)


def test_agent_central_rbac_disabled_cluster_grants_nothing() -> None:
    """Before any list and with ``enabled: false``, nobody gets a central group."""
    central = CentralRbac(CID, None, names=ONE_ISSUER)
    assert central.groups_for(ISS, ["u1"], []) == ((), OFF)
    central.receive(_doc(_a("1", "u1"), enabled=False))
    assert central.groups_for(ISS, ["u1"], []) == ((), OFF)


def test_agent_central_rbac_objects_bind_per_principal_group() -> None:
    """Four ClusterRoles always; a cluster assignment becomes a
    ClusterRoleBinding, a namespace one a RoleBinding in that namespace,
    each naming only the principal's central group; viewer reads no
    Secrets and no RBAC objects, writer no RBAC objects."""
    from agent.central_rbac_objects import Assignment

    objs = desired_objects([Assignment("1", "u1", "User", "kubernetes-viewer", None),
                            Assignment("2", "g1", "Group", "kubernetes-writer", "ns")])
    kinds = sorted(k[0] for k in objs)
    assert kinds == ["ClusterRole"] * 4 + ["ClusterRoleBinding", "RoleBinding"]
    rb = next(o for k, o in objs.items() if k[0] == "RoleBinding")
    assert rb["metadata"]["namespace"] == "ns"
    assert rb["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                               "name": "arc-central:group:g1"}]
    viewer = objs[("ClusterRole", "", "arc-central-kubernetes-viewer")]["rules"]
    writer = objs[("ClusterRole", "", "arc-central-kubernetes-writer")]["rules"]
    assert not any("secrets" in r["resources"] for r in viewer)
    assert any("secrets" in r["resources"] for r in writer)
    assert not any("rbac.authorization.k8s.io" in r["apiGroups"] for r in viewer + writer)


def test_agent_central_rbac_no_issuer_gets_another_issuers_central_roles() -> None:
    """Two trusted issuers (prefixes ``a:`` and ``b:``, as kube-aad-proxy
    impersonates them) and the same id ``u1`` under each, viewer under A and
    cluster-admin under B: A's token gets only A's group, B's only B's; the
    bindings name distinct, prefixed groups; an issuer the agent does not
    trust grants nothing and binds nothing. A reload of the prefixes renames
    the groups."""
    iss_b, untrusted = "https://b.example", "https://c.example"
    names = NameMapper({ISS: NamePrefixes("a:", "a:"), iss_b: NamePrefixes("b:", "b:")})
    central = CentralRbac(CID, None, names=names)
    assert central.receive(_doc(_a("1", "u1"), _a("2", "u1", "kubernetes-cluster-admin", issuer=iss_b),
                                _a("3", "g1", "kubernetes-admin", "Group", issuer=iss_b),
                                _a("4", "u1", "kubernetes-cluster-admin", issuer=untrusted))) == "ok"
    assert central.groups_for(ISS, ["u1"], ["g1"])[0] == ("arc-central:user:a:u1",)
    assert central.groups_for(iss_b, ["u1"], ["g1"])[0] == ("arc-central:user:b:u1", "arc-central:group:b:g1")
    assert central.groups_for(untrusted, ["u1"], [])[0] == ()
    objs = desired_objects(central.assignments, central.central_group_of)
    bound = {(o["roleRef"]["name"], o["subjects"][0]["name"]) for k, o in objs.items() if k[0] != "ClusterRole"}
    assert bound == {("arc-central-kubernetes-viewer", "arc-central:user:a:u1"),
                     ("arc-central-kubernetes-cluster-admin", "arc-central:user:b:u1"),
                     ("arc-central-kubernetes-admin", "arc-central:group:b:g1")}
    central.use_names(NameMapper({ISS: NamePrefixes("x:", "x:"), iss_b: NamePrefixes("b:", "b:")}))
    assert central.groups_for(ISS, ["u1"], [])[0] == ("arc-central:user:x:u1",)
