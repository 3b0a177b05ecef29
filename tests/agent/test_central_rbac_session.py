"""Central RBAC over a real agent session (issue 18, item 3): the connector
serves the relay's ``central-rbac`` streams; with the relay gone the list
fails closed after the staleness bound, and comes back with the relay."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from agent.central_rbac import STALE, CentralRbac
from agent.connector import Connector, ConnectorConfig
from agent.kube_aad_proxy.names import NameMapper, NamePrefixes
from relay.app import RelayServer
from tests.support.relay import BOB_OID, RelayEnv
from tests.support.waits import until
from tunnel import CENTRAL_RBAC_TARGET

SCOPE = "/resourceGroups/rg1/clusters/alpha"
GROUP = f"arc-central:user:{BOB_OID}"
STALENESS = 1.0


async def test_agent_central_rbac_fails_closed_while_the_relay_is_gone(relay_env: RelayEnv,
                                                                     tmp_path: Path) -> None:
    """The agent learns bob's viewer role over its session; the relay stops:
    after ``STALENESS`` seconds bob gets no central group (``stale``); the
    relay is back on the same port: the agent redials, gets the list again
    and bob's group returns."""
    keys = await relay_env.register("rg1", "alpha")
    admin = relay_env.token("admin")
    assert (await relay_env.api("PUT", "/api/v1/resourceGroups/rg1/clusters/alpha/centralRbac", admin,
                                {"enabled": True}))[0] == 200
    assert (await relay_env.api("PUT", "/api/v1/roleAssignments/bob-view", admin, {
        "principalId": BOB_OID, "role": "kubernetes-viewer", "scope": SCOPE}))[0] == 201
    iss = relay_env.idp.issuer
    central = CentralRbac("rg1/alpha", None, max_staleness=STALENESS, names=NameMapper({iss: NamePrefixes()}))
    connector = Connector(ConnectorConfig(relay_url=relay_env.relay.url, cluster_id="rg1/alpha",
                                          private_key_pem=keys.private_key_pem, upstream=("127.0.0.1", 9),
                                          relay_ca_pem=relay_env.relay.ca_pem),
                          stream_handlers={CENTRAL_RBAC_TARGET: central.on_stream})
    relay_env.connectors.append((connector, asyncio.ensure_future(connector.run())))
    await until(lambda: central.groups_for(iss, [BOB_OID], [])[0] == (GROUP,), "bob's central group")

    port = relay_env.relay.port
    await relay_env.relay.stop(drain_seconds=0)
    await until(lambda: central.groups_for(iss, [BOB_OID], []) == ((), STALE), "the list to go stale")

    relay_env.relay = RelayServer(dataclasses.replace(relay_env.relay.config, port=port))
    await relay_env.relay.start()
    await until(lambda: central.groups_for(iss, [BOB_OID], [])[0] == (GROUP,), "bob's group after the relay is back")
    assert central.lists_refused == 0
