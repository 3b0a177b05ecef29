"""Talk to the relay: the management REST API (``/api/v1``) and the one
client websocket session (``/client/v1/connect``) that ``arc-proxy`` keeps up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import quote, urlsplit

import aiohttp

# The core only: tunnel's asyncio adapter (TunnelSession & co.) loads on the first
# use of one of its names (PEP 562), so the REST-only commands never load it.
import tunnel
from client.auth import TokenSource, ssl_context_for
from client.config import ClientConfig
from client.errors import AuthError, CliError, ClusterNotFound, Forbidden, RelayUnreachable
from tunnel import Backoff, ErrorCode, retry_after_delay, retry_after_seconds

if TYPE_CHECKING:
    from tunnel import TunnelConfig, TunnelSession, TunnelStream

__all__ = ["RelayApi", "RelayBusy", "RelaySessionKeeper", "refused_by_goaway", "relay_unreachable",
           "role_forbidden"]

log = logging.getLogger("client")

HTTP_TIMEOUT = 15.0
CONNECT_TIMEOUT = 10.0
# Reconnect backoff: short, because a relay restart must be invisible to
# kubectl within ~2 s (issue 3 "Done when"). Each wait is drawn with full
# jitter, uniform in [0, ceiling], the ceiling doubling from START to CAP.
BACKOFF_START = 0.05
BACKOFF_CAP = 1.0
# How many busy answers ``start`` waits out before reporting the relay busy.
START_BUSY_RETRIES = 3
# The keeper checks its session at least this often (seconds): renewal time,
# or a session that went draining and was replaced on demand.
RENEW_TICK = 1.0
# Floor between two renewals (seconds), whatever the token's lifetime says.
MIN_RENEW_INTERVAL = 1.0


def refused_by_goaway(code: ErrorCode | int, session: TunnelSession) -> bool:
    """Whether a refused OPEN crossed the relay's GOAWAY on ``session`` (the
    relay never processed it: safe to open again on the keeper's next session)."""
    return code in (ErrorCode.REFUSED_STREAM, ErrorCode.GOING_AWAY) and session.draining


class RelayBusy(RelayUnreachable):
    """The relay refused the session for now (503/429 + Retry-After)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# OpenSSL's verify codes for a certificate that does not name the host or IP
# address dialled (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH).
_NAME_MISMATCH_CODES = (62, 64)


def relay_unreachable(err: BaseException, config: ClientConfig) -> RelayUnreachable:
    """The one-line error (cause and fix) for a failure to talk to the relay.

    The one place that tells apart a wrong name (DNS), nothing listening
    (refused), a certificate the configured CA did not sign, a certificate for
    another host name, another TLS failure, and a timeout.

    Args:
        err: what aiohttp (or the socket layer) raised.
        config: the client config, for the relay URL and ``relay.ca_file``.
    """
    url = config.relay_url
    host = urlsplit(url).hostname or url
    ca = f"relay.ca_file ({config.relay_ca_file})" if config.relay_ca_file else \
        "relay.ca_file (not set: the system's CA store was used)"
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        cert_err = err.certificate_error
        if getattr(cert_err, "verify_code", None) in _NAME_MISMATCH_CODES:
            return RelayUnreachable(
                f"TLS certificate of the relay at {url} is not valid for {host!r} (hostname mismatch): "
                "set relay.url to a name the relay's certificate holds")
        reason = getattr(cert_err, "verify_message", "") or type(cert_err).__name__
        return RelayUnreachable(f"TLS certificate verification failed for {url} ({reason}): check {ca}")
    if isinstance(err, (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError)):
        return RelayUnreachable(f"TLS handshake with the relay at {url} failed ({type(err).__name__}): "
                                "check that relay.url names the relay's HTTPS port")
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return RelayUnreachable(f"cannot resolve the relay's host name {host!r} ({url}): "
                                "check relay.url in the client config")
    if isinstance(err, aiohttp.ClientConnectorError) and isinstance(err.os_error, ConnectionRefusedError):
        return RelayUnreachable(f"cannot reach the relay at {url}: connection refused; is it running? "
                                "check relay.url in the client config")
    if isinstance(err, TimeoutError):
        return RelayUnreachable(f"the relay at {url} did not answer in time: check relay.url and the "
                                "network (a proxy or firewall in the way?)")
    return RelayUnreachable(f"cannot reach the relay at {url} ({type(err).__name__}): is it running? "
                            "check relay.url in the client config")


def _error_message(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"].get("code") or "")
    return ""


def role_forbidden(role: str, command: str, resource_group: str, name: str) -> Forbidden:
    """The one line for a refusal at a cluster: the role ``command`` needs, the
    scope, and the command an admin runs (a cluster that does not exist looks
    the same to a caller without a role, so the name is worth checking too)."""
    scope = f"/resourceGroups/{resource_group}/clusters/{name}"
    return Forbidden(f"cluster {resource_group}/{name} does not exist, or {command} needs the {role} role at "
                     f"scope {scope} (or a scope containing it) and you have none there: check the name and "
                     f"-g ('arcctl list'), or ask an admin to run: "
                     f"arcctl role assign --role {role} --assignee YOUR_OBJECT_ID -n {name} -g {resource_group}")


class RelayApi:
    """The relay's management REST API, authenticated with the user's token.

    Use as ``async with RelayApi(config, tokens) as api: await api.get_cluster(...)``.
    """

    def __init__(self, config: ClientConfig, tokens: TokenSource) -> None:
        self.config = config
        self.tokens = tokens
        self._ssl = ssl_context_for(config.relay_ca_file, "relay")
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RelayApi:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, str] | None = None, what: str = "") -> Any:
        """One REST call; maps failures to one-line ``CliError``s.

        Args:
            method: HTTP method.
            path: path under the relay URL, e.g. ``/api/v1/clusters``.
            json: request body.
            params: query parameters.
            what: names the resource in a 404 message (e.g. ``cluster default/demo``).

        Returns:
            The decoded JSON body (``None`` for an empty 2xx body).
        """
        assert self._http is not None, "use RelayApi as an async context manager"
        token = await self.tokens.get()
        url = self.config.relay_url + path
        try:
            async with self._http.request(method, url, json=json, params=params, ssl=self._ssl,
                                          headers={"Authorization": f"Bearer {token}"}) as resp:
                text = await resp.text()
                body: Any = None
                if text:
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError:
                        body = None
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise relay_unreachable(err, self.config) from None
        if status < 300:
            return body
        msg = _error_message(body)
        if status == 401:
            self.tokens.invalidate()
            raise AuthError(f"the relay refused the token ({msg or 'unauthorized'}): "
                            "it may be expired or from an untrusted issuer; get a new one")
        if status == 403:
            raise Forbidden(f"{msg or 'forbidden'}: ask an admin for a role assignment")
        if status == 404:
            raise ClusterNotFound(f"{what or path} not found at the relay"
                                  + (f" ({msg})" if msg else "")
                                  + ": check the name and -g/--resource-group, or 'arcctl list'")
        raise CliError(f"relay answered {status} to {method} {path}: {msg or text[:200]}")

    @staticmethod
    def cluster_path(resource_group: str, name: str) -> str:
        return f"/api/v1/resourceGroups/{quote(resource_group, safe='')}/clusters/{quote(name, safe='')}"

    async def get_cluster(self, resource_group: str, name: str, *, command: str = "arcctl show",
                          role: str = "viewer") -> dict[str, Any]:
        """The registration of ``resource_group/name``.

        Args:
            resource_group: the cluster's resource group.
            name: the cluster's name.
            command: the caller's command, named in a refusal.
            role: the least role ``command`` needs on the cluster (relay.roles:
                ``viewer`` for show, ``cluster-user`` for arc-proxy).

        Raises:
            ClusterNotFound: no such cluster (admins see this).
            Forbidden: no such cluster or no role on it; the relay does not
                tell the two apart to callers without a role, so neither do we.
        """
        cid = f"{resource_group}/{name}"
        try:
            body = await self.request("GET", self.cluster_path(resource_group, name),
                                      what=f"cluster {cid}")
        except Forbidden:
            raise role_forbidden(role, command, resource_group, name) from None
        return dict(body or {})

    async def check_delete(self, resource_group: str, name: str) -> None:
        """Ask the relay whether the caller may delete the registration, without
        deleting it (``DELETE ...?dryRun=true``).

        Raises:
            ClusterNotFound: no such cluster.
            Forbidden: the caller has no onboarding (or admin) role on it.
        """
        try:
            await self.request("DELETE", self.cluster_path(resource_group, name),
                               params={"dryRun": "true"}, what=f"cluster {resource_group}/{name}")
        except Forbidden:
            raise role_forbidden("onboarding", "arcctl delete", resource_group, name) from None

    async def list_clusters(self, resource_group: str | None = None) -> list[dict[str, Any]]:
        """Registered clusters, optionally in one resource group."""
        params = {"resourceGroup": resource_group} if resource_group else None
        body = await self.request("GET", "/api/v1/clusters", params=params)
        if isinstance(body, dict):
            body = body.get("value", body.get("items", []))
        return list(body or [])

    async def put_cluster(self, resource_group: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Register (or update) a cluster."""
        body = await self.request("PUT", self.cluster_path(resource_group, name), json=spec)
        return dict(body or {})

    async def put_role_assignment(self, assignment_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a role assignment."""
        body = await self.request("PUT", f"/api/v1/roleAssignments/{quote(assignment_id, safe='')}",
                                  json=spec)
        return dict(body or {})


class RelaySessionKeeper:
    """Keeps one tunnel session to ``/client/v1/connect`` up.

    :meth:`start` connects once (errors surface to the caller); afterwards a
    background task reconnects with a short backoff whenever the session ends
    (relay restart), and :meth:`session` connects on demand if a local
    connection arrives while the session is down or draining.

    Token renewal without dropping streams (no wire change): the relay
    authenticates a session once, at the websocket upgrade, and sends GOAWAY
    when that token expires. Shortly before (``Token.renew_at``) the keeper
    dials a second session with a fresh token, moves new streams to it, and
    sends GOAWAY on the old one itself: streams already open there (``get -w``,
    ``logs -f``, exec) run on until they end, then the old session closes. The
    relay ends them (RESET FORBIDDEN "token expired") when the token that
    opened them expires: a stream lives no longer than its credential.

    A relay that stops (rolling restart) sends GOAWAY: the keeper wakes at once
    and dials a new session (through a load balancer: another replica) while
    the old one's streams finish, the same make-before-break as a renewal.
    """

    def __init__(self, config: ClientConfig, tokens: TokenSource, *, name: str = "client") -> None:
        self.config = config
        self.tokens = tokens
        self.name = name
        self._ssl = ssl_context_for(config.relay_ca_file, "relay")
        self._tcfg: TunnelConfig | None = None
        self._http: aiohttp.ClientSession | None = None
        self._session: TunnelSession | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._stopping = False
        self.connects = 0
        self.renewals = 0
        # The last wait of the reconnect loop after a failed connect (seconds).
        self.last_delay = 0.0
        # When the live session's token must be replaced (epoch seconds).
        self._renew_at = float("inf")
        # Sessions replaced by a renewal, draining their open streams.
        self._old_runs: set[asyncio.Task[None]] = set()
        # Why the relay is lost (its session ended and a reconnect failed), or
        # None while it is reachable: while lost, session() answers at once.
        self.relay_lost_reason: str | None = None

    @property
    def url(self) -> str:
        base = self.config.relay_url
        if base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        return base + "/client/v1/connect"

    async def start(self) -> TunnelSession:
        """Connect now (raising one-line errors) and start the reconnect loop.

        Returns:
            The connected ``TunnelSession``.
        """
        self._tcfg = tunnel.TunnelConfig()
        self._http = aiohttp.ClientSession()
        for attempt in range(START_BUSY_RETRIES + 1):
            try:
                session = await self._connect()
                break
            except RelayBusy as busy:
                if attempt == START_BUSY_RETRIES:
                    raise
                delay = retry_after_delay(busy.retry_after)
                log.info("relay busy; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
        self._runner = asyncio.create_task(self._keep_up(), name="relay-session-keeper")
        return session

    async def session(self, timeout: float = CONNECT_TIMEOUT) -> TunnelSession:
        """The live session, connecting if it is down.

        Raises:
            RelayUnreachable: the relay is lost (at once), or could not be
                reached within ``timeout``.
            CliError: another reason not to connect (token refused, forbidden).
        """
        s = self._session
        if self._usable(s):
            return s
        self._kick.set()
        if self.relay_lost_reason is not None:
            # The reconnect loop (kicked now, retrying at least every
            # BACKOFF_CAP) notices the relay's return; a local connection does
            # not wait for it.
            raise RelayUnreachable(self.relay_lost_reason)
        return await asyncio.wait_for(self._connect(), timeout)

    @staticmethod
    def _usable(s: TunnelSession | None) -> TypeGuard[TunnelSession]:
        # A draining session (GOAWAY either way) refuses new streams.
        return s is not None and not s.closed and not s.draining

    async def _connect(self, *, renew: bool = False) -> TunnelSession:
        async with self._lock:
            s = self._session
            if self._usable(s) and not (renew and time.time() >= self._renew_at):
                return s
            assert self._http is not None and self._tcfg is not None, "call start() first"
            token_info = await self.tokens.get_token()
            token = token_info.access_token
            try:
                async with asyncio.timeout(self._tcfg.handshake_timeout or None):
                    ws = await self._http.ws_connect(
                        self.url, headers={"Authorization": f"Bearer {token}"}, ssl=self._ssl,
                        **tunnel.ws_connect_kwargs(self._tcfg))
            except aiohttp.WSServerHandshakeError as err:
                if err.status == 401:
                    self.tokens.invalidate()
                    raise AuthError("the relay refused the token (expired or invalid): "
                                    "get a new one and retry") from None
                if err.status == 403:
                    raise Forbidden("the relay refused arc-proxy's connection (forbidden): arc-proxy "
                                    "needs the cluster-user role on the cluster; ask an admin") from None
                hint = retry_after_seconds(err.headers) if err.status in (429, 503) else None
                if hint is not None:
                    raise RelayBusy(f"the relay is busy (HTTP {err.status}); it asked to retry "
                                    f"after {hint:g} s", hint) from None
                raise RelayUnreachable(f"relay refused the websocket (HTTP {err.status}) at "
                                       f"{self.url}") from None
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                raise relay_unreachable(err, self.config) from None
            session = tunnel.TunnelSession(ws, is_client=True, config=self._tcfg,
                                                 name=self.name, on_stream=self._refuse)
            old, old_run = self._session, self._run_task
            # Keep a reference: the event loop holds tasks only weakly.
            self._run_task = asyncio.create_task(self._run(session), name=f"{self.name}-run")
            self._session = session
            # Never renew more often than MIN_RENEW_INTERVAL, even for a token
            # that cannot be refreshed (token_command printing the same one).
            self._renew_at = max(token_info.renew_at(), time.time() + MIN_RENEW_INTERVAL)
            self.connects += 1
            if old is not None and not old.closed and old_run is not None:
                self.renewals += 1
                self._old_runs.add(old_run)
                old_run.add_done_callback(self._old_runs.discard)
                try:
                    await old.goaway()  # its open streams finish; new ones use `session`
                except Exception as err:  # the old session may be closing already
                    log.debug("goaway on the replaced session failed: %s", type(err).__name__)
                log.info("%s %s its relay session (connect #%d); previous session drains "
                         "%d open stream(s)", self.name,
                         "moved" if old.goaway_received else "renewed", self.connects, old.streams)
            else:
                log.info("%s connected to the relay (connect #%d)", self.name, self.connects)
            if self.relay_lost_reason is not None:
                self.relay_lost_reason = None
                log.warning("relay %s is reachable again: serving kubectl", self.config.relay_url)
            return session

    async def _run(self, session: TunnelSession) -> None:
        try:
            await session.run()
        except Exception as err:  # the session's end is reported by close_reason
            log.debug("session run ended with %s", type(err).__name__)

    async def _refuse(self, stream: TunnelStream) -> None:
        # The relay never opens streams towards a client.
        stream.reject(ErrorCode.REFUSED_STREAM, "client accepts no streams")

    async def _keep_up(self) -> None:
        backoff = Backoff(BACKOFF_START, BACKOFF_CAP)
        while not self._stopping:
            s = self._session
            run = self._run_task
            renew = False
            if self._usable(s) and run is not None:
                # Wake when the session ends, at renewal time, or every tick
                # (a session replaced on demand by session() is noticed then).
                tick = min(RENEW_TICK, max(0.0, self._renew_at - time.time()))
                goaway = asyncio.ensure_future(s.wait_goaway_received())
                try:
                    done, _ = await asyncio.wait({run, goaway}, timeout=tick)
                finally:
                    goaway.cancel()
                if self._stopping:
                    return
                if goaway in done and run not in done:
                    log.info("%s relay sent GOAWAY (it is stopping, or the token expired); opening a new session while "
                             "open streams finish", self.name)
                elif not done:
                    if time.time() < self._renew_at:
                        continue
                    renew = True
                    log.info("%s relay token is due for renewal; opening a new session", self.name)
                else:
                    log.info("%s session to the relay ended (%s); reconnecting", self.name,
                             s.close_reason or "closed")
                backoff.reset()
            busy_wait: float | None = None
            try:
                await self._connect(renew=renew)
                backoff.reset()
                continue
            except AuthError:
                self.tokens.invalidate()
            except RelayBusy as busy:
                # Honour the relay's pace; an on-demand session() does not cut this short.
                busy_wait = retry_after_delay(busy.retry_after)
                log.debug("reconnect refused, relay busy: waiting %.1f s", busy_wait)
            except CliError as err:
                log.debug("reconnect failed: %s", err)
                if self.relay_lost_reason is None and not self._usable(self._session):
                    # Said once per loss, in the user's shell; kubectl is refused at once meanwhile.
                    self.relay_lost_reason = str(err)
                    log.warning("lost the relay: %s; kubectl is refused until it is back", err)
            self._kick.clear()
            # The backoff advances on a busy refusal too: the relay's pace wins
            # this time, and the next plain failure waits longer.
            jittered = backoff.next_delay()
            self.last_delay = busy_wait if busy_wait is not None else jittered
            try:
                if busy_wait is not None:
                    await asyncio.sleep(busy_wait)
                else:
                    await asyncio.wait_for(self._kick.wait(), self.last_delay)
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Stop reconnecting, close the session (GOAWAY + websocket close)."""
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        s = self._session
        if s is not None and not s.closed:
            try:
                await asyncio.wait_for(s.close(), 3.0)
            except (TimeoutError, Exception) as err:  # closing best effort
                log.debug("close failed: %s", type(err).__name__)
        for old_run in list(self._old_runs):
            old_run.cancel()
        if self._run_task is not None:
            self._run_task.cancel()
            await asyncio.gather(self._run_task, *self._old_runs, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
