"""The relay server: one aiohttp TLS application with every endpoint.

Use :class:`RelayServer` (``start`` / ``stop``); ``arc-relay`` is a thin CLI
around it. :func:`ensure_dev_tls` makes a development CA and serving
certificate in the state dir when no certificate is configured (the demo and
tests use it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from certs import CertificateAuthority, IssuedCertificate, server_ssl_context, write_pem_pair
from health import HealthListener
from identity import Principal, TokenInvalid, TokenValidator, TrustedIssuer
from identity.agent_assertion import AgentAssertionVerifier
from relay import agent_endpoint, central_rbac_api, client_endpoint, management_api
from relay.central_rbac_feed import CentralRbacFeed
from relay.central_rbac_store import (
    CentralRbacStore,
    PostgresCentralRbacStore,
    SqliteCentralRbacStore,
)
from relay.config import ConfigError, RelayConfig, authorization_warnings
from relay.database_health import DatabaseHealth
from relay.directory import LocalDirectory
from relay.drain import move_agents
from relay.health_listener import ready_checks, relay_health_listener
from relay.listener import RelayListener
from relay.metrics import PresenceCollector, RelayMetrics
from relay.native_upgrade import NativeRouter, connect_router
from relay.peering import Peering
from relay.postgres_store import PostgresDatabase, PostgresRegistry, PostgresRoleStore
from relay.presence import MemoryPresence, PresenceDirectory, SessionIds
from relay.presence_redis import RedisPresence
from relay.registry import ClusterRegistry, SqliteDatabase, SqliteRegistry
from relay.roles import RoleStore, SqliteRoleStore
from relay.router import DataRecorder
from relay.state import STATE, RelayState
from relay.status import LiveStatusRegistry
from relay.unexpected_errors import install_parser_error_filter, unexpected_error_middleware
from tunnel import TunnelConfig, TunnelSession
from tunnel.aio import adapter_limits

log = logging.getLogger("relay")


@dataclass(frozen=True)
class DevTls:
    """Development TLS material in the state dir (reused across restarts so
    agents and clients keep trusting the same CA)."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()


def ensure_dev_tls(
    state_dir: str | Path,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
) -> DevTls:
    """Create (once) a dev CA and a relay serving certificate under
    ``state_dir/tls``; later calls return the existing files.

    Returns:
        Paths of the serving chain, its key and the CA certificate (what agents
        and clients configure as ``relay.ca_file``).
    """
    tls_dir = Path(state_dir) / "tls"
    cert, key, ca = tls_dir / "relay.crt", tls_dir / "relay.key", tls_dir / "ca.crt"
    if not (cert.is_file() and key.is_file() and ca.is_file()):
        authority = CertificateAuthority.create("arc-relay development CA")
        issued = authority.issue_server(dns_names, ip_addresses, common_name="arc-relay")
        write_pem_pair(tls_dir, "relay", issued)
        ca.write_bytes(authority.certificate_pem)
        log.info("dev TLS created dir=%s", tls_dir)
    return DevTls(cert, key, ca)


def _tunnel_config(config: RelayConfig) -> TunnelConfig:
    raw = dict(config.tunnel)
    try:
        # The adapter's frame size and stream window unless configured (the
        # core's defaults are smaller; tunnel/aio_config.py has the measurements).
        limits = adapter_limits(**raw.pop("limits", {}))
        return TunnelConfig(limits=limits, **raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"limits.tunnel: {exc}") from None


def _ssl_context(config: RelayConfig) -> tuple[ssl.SSLContext, DevTls | None]:
    dev = None
    if config.tls_cert_file and config.tls_key_file:
        cert_file, key_file = Path(config.tls_cert_file), Path(config.tls_key_file)
    else:
        dev = ensure_dev_tls(config.state_dir)
        cert_file, key_file = dev.cert_file, dev.key_file
    try:
        chain, key = cert_file.read_bytes(), key_file.read_bytes()
        # server_ssl_context wants leaf and CA separately only to rebuild the chain.
        ctx = server_ssl_context(IssuedCertificate(chain, key, b""))
        # No TLS 1.3 session tickets: agents and arc-proxy dial through aiohttp,
        # which offers no public way to keep an SSLSession across dials, so a
        # ticket is never used; making and sending two per handshake cost ~15 %
        # of the relay's TLS handshake CPU and one more socket write.
        ctx.num_tickets = 0
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file: {exc.filename}: {exc.strerror}") from None
    except ssl.SSLError:
        raise ConfigError(f"tls.cert_file {cert_file} / key_file {key_file} are not a matching PEM pair") from None
    return ctx, dev


def _presence(config: RelayConfig) -> MemoryPresence | RedisPresence:
    """The configured presence; its replica id and address are set once the relay listens."""
    settings = config.presence
    if settings.redis_url is None:
        return MemoryPresence("", "")
    try:
        return RedisPresence(settings.redis_url, replica_id="", address="", ttl_seconds=settings.ttl_seconds)
    except ValueError as exc:  # redis-py refuses the URL's form (the schema checked its scheme)
        raise ConfigError(f"presence.redis_url: {exc}") from None


def _advertise(config: RelayConfig, port: int, host: str | None = None) -> str:
    """``presence.advertise``, else the listen address with the bound port (the
    host name for a wildcard host); with peering, the peer listener's."""
    if config.presence.advertise:
        return config.presence.advertise
    host = config.host if host is None else host
    host = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NoIssuers:
    """Stands in for ``TokenValidator`` when no issuer is configured: agents
    can still connect, every user token is refused with a clear reason."""

    async def validate(self, token: str) -> Principal:
        raise TokenInvalid("no trusted OIDC issuer is configured on this relay")

    async def close(self) -> None:
        return None


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: accepting connections and the database answers (the same
    checks as the health listener's ``/readyz``)."""
    for why in (check() for check in ready_checks(request.app[STATE]).values()):
        if why is not None:
            return web.Response(status=503, text=f"{why}\n")
    return web.Response(text="ready\n")


def openapi_document() -> dict[str, Any]:
    """The management API's OpenAPI document (``relay/openapi.json``)."""
    return json.loads(resources.files("relay").joinpath("openapi.json").read_text())  # type: ignore[no-any-return]


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of the management API."""
    return web.json_response(openapi_document())


class RelayServer:
    """One relay: ``await start()``, serve, ``await stop()``.

    Attributes (after ``start``): ``port``, ``url`` (``https://host:port``),
    ``health_url`` (``http://host:port`` of the /livez /readyz /metrics
    listener), ``ca_file`` / ``ca_pem`` (the dev CA when no certificate is
    configured, else None), ``state``.
    """

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.port = 0
        self.url = ""
        self.ca_file: Path | None = None
        self.ca_pem: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._listener: RelayListener | None = None
        # The connect paths' native websockets (listener.transport: native); None: aiohttp's.
        self._native: NativeRouter | None = None
        self.state: RelayState | None = None
        self._presence: MemoryPresence | RedisPresence | None = None
        self._peering: Peering | None = None
        self._db: SqliteDatabase | None = None
        self._status_db: SqliteDatabase | None = None
        self._postgres: PostgresDatabase | None = None
        self._status: LiveStatusRegistry | None = None
        self._database_health: DatabaseHealth | None = None
        self._health: HealthListener | None = None
        self.health_url = ""

    @property
    def listener(self) -> RelayListener:
        """The listening socket's guards and counters (after ``start``)."""
        if self._listener is None:
            raise RuntimeError("relay is not started")
        return self._listener

    def _validator(self, config: RelayConfig | None = None) -> TokenValidator | NoIssuers:
        config = config or self.config
        if not config.issuers:
            log.warning("no oidc.issuers configured: every user token will be refused")
            return NoIssuers()
        issuers = []
        for raw in config.issuers:
            ca_pem = None
            if raw.ca_file:
                try:
                    ca_pem = Path(raw.ca_file).read_bytes()
                except OSError as exc:
                    raise ConfigError(f"oidc issuer ca_file {raw.ca_file}: {exc.strerror}") from None
            try:
                issuers.append(TrustedIssuer(issuer=raw.issuer, audiences=list(raw.audiences),
                                             ca_pem=ca_pem, tenant_ids=raw.tenant_ids))
            except ValueError as exc:
                raise ConfigError(f"oidc issuer {raw.issuer}: {exc}") from None
        resolver = config.group_source.build() if config.group_source else None
        return TokenValidator(issuers, group_resolver=resolver, **config.validator_options)

    async def reload_identity(self, new: RelayConfig) -> None:
        """Apply ``new``'s trusted issuers, admins, group source and token
        validation keys (SIGHUP) without dropping a session: later tokens are
        validated against them; open streams are re-checked at once (a removed
        issuer's end). Everything else in ``new`` is ignored.

        Raises:
            ConfigError: ``new`` cannot be applied; the old configuration stays.
        """
        state = self.state
        if state is None:
            raise RuntimeError("relay is not started")
        try:
            candidate = dataclasses.replace(
                self.config, issuers=new.issuers, admins=new.admins, group_source=new.group_source,
                validator_options=new.validator_options)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        validator = self._validator(candidate)  # ConfigError: a CA file cannot be read
        old = state.validator
        self.config = state.config = candidate
        state.validator = validator
        state.roles.bootstrap_admins = candidate.bootstrap_admins
        state.roles.cache.clear()
        if state.validator_collector is not None:
            state.validator_collector.validator = validator if isinstance(validator, TokenValidator) else None
        for warning in authorization_warnings(candidate):
            log.warning("%s", warning)
        state.live_streams.wake()
        await old.close()
        log.info("issuer configuration reloaded issuers=%s admins=%d",
                 ",".join(i.alias or i.issuer for i in candidate.issuers) or "none",
                 len(candidate.bootstrap_admins))

    async def start(self) -> None:
        """Open the database, bind and serve.

        Raises:
            ConfigError: unreadable TLS/CA files, bad limits, port in use.
        """
        config = self.config
        ssl_ctx, dev = _ssl_context(config)
        if dev is not None:
            self.ca_file, self.ca_pem = dev.ca_file, dev.ca_pem
        tunnel_config = _tunnel_config(config)
        for warning in authorization_warnings(config):
            log.warning("%s", warning)
        validator = self._validator()
        store, writer, roles = await self._open_database()
        await _scope_old_assignments(roles, config)
        presence = _presence(config)
        self._presence = presence
        directory = PresenceDirectory(LocalDirectory[TunnelSession](), presence, SessionIds())
        self._status = LiveStatusRegistry(store, directory.is_present, config.status_flush_seconds,
                                          writer=writer, present_elsewhere=presence.live_clusters)
        await self._status.start()  # reconcile: nothing stays Connected without a session
        self._database_health = DatabaseHealth(self._status.ping)
        await self._database_health.start()
        self.state = RelayState(
            config=config,
            registry=self._status,
            roles=roles,
            database=self._database_health,
            directory=directory,
            metrics=RelayMetrics(),
            validator=validator,
            verifier=AgentAssertionVerifier([]),
            tunnel_config=tunnel_config,
            recorder=DataRecorder(config.record_data_file) if config.record_data_file else None,
            presence=presence,
        )
        self.state.central_rbac = CentralRbacFeed(self.state, self._central_rbac_store())
        self.state.central_rbac.start()
        self.state.metrics.registry.register(PresenceCollector(presence))
        install_parser_error_filter()
        app = web.Application(client_max_size=64 * 1024, middlewares=[unexpected_error_middleware])
        app[STATE] = self.state
        app.router.add_get("/healthz", healthz, allow_head=False)
        app.router.add_get("/readyz", readyz, allow_head=False)
        app.router.add_get("/openapi.json", openapi, allow_head=False)
        management_api.add_routes(app)
        central_rbac_api.add_routes(app)
        agent_endpoint.add_routes(app)
        client_endpoint.add_routes(app)
        # Access logs would be one line per kubectl stream setup; events are
        # logged by the handlers instead.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0,
                                     keepalive_timeout=config.edge.keepalive_timeout)
        # Our own listener, not a TCPSite: it terminates TLS with small buffers
        # and bounds what a connection holds before its first request head.
        if config.edge.transport == "native":
            self._native = connect_router(self.state)
        self._listener = RelayListener(self._runner, ssl_ctx, config.edge, self._native)
        await self._runner.setup()
        try:
            await self._listener.start(config.host, config.port)
        except OSError as exc:
            await self._runner.cleanup()
            await validator.close()
            await presence.close()
            await self._status.stop()
            await self._database_health.stop()
            self._close_databases()
            if self._postgres is not None:
                await self._postgres.close()
                self._postgres = None
            self._runner = None
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}; "
                "pick a free port in 'listen'"
            ) from None
        self._health = relay_health_listener(self.state, self._listener)
        try:
            await self._health.start(config.health_host, config.health_port)
        except OSError as exc:
            self._health = None
            await self.stop(drain_seconds=0)
            raise ConfigError(
                f"cannot listen on health.listen {config.health_host}:{config.health_port}: "
                f"{exc.strerror}; pick a free port in 'health.listen'"
            ) from None
        self.health_url = self._health.url
        self.state.admission.start()  # its loop-lag timer
        self.port = self._listener.port
        if config.peering is not None:
            try:
                self._peering = self.state.peering = Peering(self.state, config.peering, config.edge)
                await self._peering.start()
            except ConfigError:
                self._peering = self.state.peering = None
                await self.stop(drain_seconds=0)
                raise
            presence.address = _advertise(config, self._peering.port, config.peering.host)
            if config.presence.redis_url is None:
                log.warning("peering is configured but presence.redis_url is not: this replica "
                            "sees no other replica's agents, so it forwards nothing")
        else:
            presence.address = _advertise(config, self.port)
        presence.replica_id = config.presence.replica_id or presence.address
        await presence.start()
        host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.url = f"https://{f'[{host}]' if ':' in host else host}:{self.port}"
        self.state.verifier.audiences = config.agent_audiences(self.port)
        log.info("relay listening url=%s agent_audience=%s dev_tls=%s tls_engine=%s presence=%s "
                 "replica=%s", self.url, self.state.verifier.audiences[0], dev is not None,
                 config.edge.tls_engine, "redis" if config.presence.redis_url else "memory",
                 presence.replica_id)

    def _central_rbac_store(self) -> CentralRbacStore:
        """The central RBAC switch in the database :meth:`_open_database` opened."""
        if self._postgres is not None:
            return PostgresCentralRbacStore(self._postgres)
        assert self._db is not None
        return SqliteCentralRbacStore(self._db)

    async def _open_database(self) -> tuple[ClusterRegistry, ClusterRegistry | None, RoleStore]:
        """The cluster store, the store the status write-behind flushes
        through (None: the same), and the role store.

        Raises:
            ConfigError: the database cannot be opened or reached.
        """
        config = self.config
        if config.database_url:
            password = None
            if config.database_password_file:
                try:
                    password = Path(config.database_password_file).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"database.password_file {config.database_password_file}: "
                                      f"{exc.strerror}") from None
            try:
                self._postgres = await PostgresDatabase.connect(config.database_url, password)
            except Exception as exc:  # network, auth, TLS, bad name: all operator-fixable
                # The URL never holds the password (the config refuses one).
                raise ConfigError(f"cannot connect to database {config.database_url}: "
                                  f"{type(exc).__name__}: {exc}; check database.url and "
                                  "database.password_file") from None
            # One pool: a flush takes a connection of its own from it.
            return (PostgresRegistry(self._postgres), None,
                    PostgresRoleStore(self._postgres, config.bootstrap_admins))
        try:
            self._db = SqliteDatabase(config.database_path)
            # Status is derived from the directory of live sessions (relay/status.py);
            # its write-behind flushes through a connection (and thread) of its own,
            # so a flush never queues the statements cluster lookups wait for.
            if config.database_path != ":memory:":
                self._status_db = SqliteDatabase(config.database_path)
        except Exception as exc:  # sqlite3.Error or OSError: both operator-fixable
            self._close_databases()
            raise ConfigError(f"cannot open database {config.database_path}: {exc}") from None
        return (SqliteRegistry(self._db), SqliteRegistry(self._status_db) if self._status_db else None,
                SqliteRoleStore(self._db, config.bootstrap_admins))

    def _close_databases(self) -> None:
        for db in (self._status_db, self._db):
            if db is not None:
                db.close()
        self._status_db = self._db = None

    async def stop(self, drain_seconds: float | None = None, move_seconds: float | None = None) -> None:
        """Stop without loss (relay/drain.py): fail readiness and stop accepting,
        GOAWAY the arc-proxy sessions, move the agents make-before-break (at
        most ``move_seconds``, default ``config.agent_move_seconds``, never
        more than an explicit ``drain_seconds``; not at all without shared
        presence: a lone relay has no other replica), GOAWAY every session, wait up
        to ``drain_seconds`` (default ``config.drain_seconds``) for streams to
        finish, then close."""
        if self._runner is None or self.state is None:
            return
        state = self.state
        state.accepting = False  # /readyz: 503 from now on
        state.admission.stop()
        if self._listener is not None:
            self._listener.close()
        drain = self.config.drain_seconds if drain_seconds is None else drain_seconds
        move = self.config.agent_move_seconds if move_seconds is None else move_seconds
        if drain_seconds is not None:
            move = min(move, drain_seconds)
        if not self.config.presence.redis_url:
            move = 0.0  # one replica (presence in memory): there is nowhere to move to
        clients = list(state.client_sessions)
        agents = list(state.agent_fingerprints)
        log.info("relay draining clients=%d agents=%d", len(clients), len(agents))
        # arc-proxy opens its next streams on a new session (another replica).
        await asyncio.gather(*(s.goaway() for s in clients), return_exceptions=True)
        state.moving_agents = move > 0  # a control stream opening now is asked at once
        moved, stayed = await move_agents(agents, list(state.control_streams), move)
        state.moving_agents = False
        if agents:
            log.info("relay agents moved=%d not_moved=%d", moved, stayed)
        sessions = list(state.sessions)
        await asyncio.gather(*(s.goaway() for s in sessions), return_exceptions=True)
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.wait_closed()) for s in sessions],
                               timeout=drain)
        await asyncio.gather(*(s.close() for s in list(state.sessions)), return_exceptions=True)
        await state.live_streams.close()
        if self._native is not None:
            await self._native.close()
            self._native = None
        if state.central_rbac is not None:
            await state.central_rbac.stop()
        if self._peering is not None:
            await self._peering.stop()
            self._peering = None
        await self._runner.cleanup()
        await state.validator.close()
        if state.recorder is not None:
            state.recorder.close()
        if self._status is not None:
            await self._status.stop()  # write what the write-behind still holds
        if self._presence is not None:
            await self._presence.close()  # after the sessions: their unregistrations go out
            self._presence = None
        if self._database_health is not None:
            await self._database_health.stop()
        self._close_databases()
        if self._postgres is not None:
            await self._postgres.close()
            self._postgres = None
        self._runner = None
        # Last: /readyz says "shutting down" to the load balancer throughout the drain.
        if self._health is not None:
            await self._health.stop()
            self._health = None
        log.info("relay stopped")


async def _scope_old_assignments(roles: RoleStore, config: RelayConfig) -> None:
    """Role assignments made before they named an issuer (migration 2) belong
    to the issuer the relay trusted then: with exactly one trusted issuer they
    are given to it; beside several they stay unscoped, match nobody, and the
    relay says so once."""
    if len(config.issuers) == 1:
        claimed = await roles.claim_unscoped(config.issuers[0].issuer)
        if claimed:
            log.info("role assignments scoped to the only trusted issuer count=%d issuer=%s",
                     claimed, config.issuers[0].issuer)
        return
    unscoped = await roles.count_unscoped()
    if unscoped:
        log.warning("role assignments name no issuer and match nobody count=%d: recreate them with "
                    "principalIssuer (arcctl role assign --assignee-issuer), or start once with only "
                    "the issuer they were made for", unscoped)
