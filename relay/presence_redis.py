"""Presence in Redis: soft state with an expiry, fenced, re-asserted from memory.

Keys. One hash per cluster, ``arc:presence:<cluster id>``; one field per
replica holding a session of it (its replica id); the value
``"<session id> <expiry, Redis ms> <address>"``. Every write sets the hash's
own expiry to at least the TTL, so the hash of a cluster whose replicas all
died disappears by itself; a dead replica's field in a hash another replica
still refreshes is skipped by lookups once its expiry passed and deleted by
the next write. All times are Redis's own clock (``TIME`` inside the
scripts): replicas' clocks never decide what has expired.

Fencing. Writes are Lua scripts (atomic on the server): a registration is
written only when the replica's field holds no session id or a lower or
equal one (compare-and-set), and an unregistration deletes the field only
when it holds exactly that session id (compare-and-delete). So an old process
(a replica restarted under the same id, or a stale write of the same one)
can never remove or overwrite a newer registration.

Refresh and re-assert. One background task owns every write, so writes reach
Redis in the order the relay made the changes. It writes what changed as soon
as it changed, and every ``ttl / 3`` re-writes every registration this
process holds in memory. A registration the store had lost (Redis restarted
or flushed) is thus back within one refresh period; one line says so. While
Redis is unreachable the task retries every ``min(ttl / 3, 1 s)``, the relay
serves its local sessions as before, one line is logged on the loss and one
on the recovery, and ``arc_relay_presence_errors_total`` counts failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from relay.background import cancel_and_wait
from relay.presence import PresenceUnavailable, Route

__all__ = ["KEY_PREFIX", "RedisPresence", "presence_key", "redacted_url"]

log = logging.getLogger("relay")

KEY_PREFIX = "arc:presence:"
# A registration is re-written this many times per TTL: two refreshes can be
# lost (a Redis failover, a slow network) before a live route lapses.
REFRESHES_PER_TTL = 3
# While Redis is unreachable, a write is retried at least this often (seconds),
# so routes are back soon after it is.
MAX_RETRY_SECONDS = 1.0
# One Redis round trip (connect, or a pipeline of every registration) may take
# this long (seconds) before it counts as a failure; a refresh period bounds it.
MAX_OPERATION_SECONDS = 2.0
# Registrations per pipeline: encoding and parsing a pipeline runs on the
# event loop without a break. bench.presence, 5,000 routes on a loaded 2-core
# machine: one pipeline of all stalled the loop ~670 ms, pipelines of 256 ~66 ms.
MAX_PIPELINE = 256
# What a failed Redis call raises: the client's own errors, and socket errors
# redis-py lets through on some connect paths.
STORE_ERRORS = (RedisError, OSError, TimeoutError)
# Clusters looked up per pipeline by ``live_clusters``.
LOOKUP_CHUNK = 500

# KEYS[1] the cluster's hash; ARGV: replica id, session id, address, TTL ms.
# Returns 2 when the field was created, 1 when refreshed, 0 when a newer
# session of this replica id holds it (fenced).
REGISTER_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
local result = 2
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local sid, expires = string.match(fields[i + 1], '^(%d+) (%d+) ')
  if fields[i] == ARGV[1] then
    if tonumber(sid) > tonumber(ARGV[2]) then return 0 end
    if sid == ARGV[2] then result = 1 end
  elseif tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. string.format('%.0f', now + ttl) .. ' ' .. ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return result
"""

# KEYS[1] the cluster's hash; ARGV: replica id, session id. 1 when deleted.
UNREGISTER_SCRIPT = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.match(value, '^(%d+) ') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS[1] the cluster's hash. Flat list: field, value, ... of unexpired routes.
LOOKUP_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local expires = string.match(fields[i + 1], '^%d+ (%d+) ')
  if expires and tonumber(expires) >= now then
    out[#out + 1] = fields[i]
    out[#out + 1] = fields[i + 1]
  end
end
return out
"""


def presence_key(cluster_id: str) -> str:
    """The Redis key of a cluster's routes."""
    return KEY_PREFIX + cluster_id


def redacted_url(url: str) -> str:
    """``url`` without its user name and password (for logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def parse_route(replica_id: str, value: str) -> Route | None:
    """The route of one hash field (None: not ours to read)."""
    session_id, _, rest = value.partition(" ")
    expires_ms, _, address = rest.partition(" ")
    if not (session_id.isdigit() and expires_ms.isdigit() and address):
        return None
    return Route(int(session_id), replica_id, address, int(expires_ms) / 1000)


class RedisPresence:
    """``Presence`` in Redis (see the module docstring for keys and fencing).

    ``start`` launches the writer task, ``close`` stops it after a last write.
    ``errors``, ``reasserted``, ``fenced`` and ``reachable`` are what the
    metrics report.
    """

    def __init__(self, url: str, *, replica_id: str, address: str, ttl_seconds: float) -> None:
        self.url = url
        self.replica_id = replica_id
        self.address = address
        self.ttl_seconds = ttl_seconds
        self.refresh_seconds = ttl_seconds / REFRESHES_PER_TTL
        self.retry_seconds = min(self.refresh_seconds, MAX_RETRY_SECONDS)
        timeout = min(MAX_OPERATION_SECONDS, self.refresh_seconds)
        # One immediate retry, on a broken connection only: a pooled connection
        # dies with every Redis restart, and the first command after it should
        # reconnect, not fail. Nothing more: the writer task retries with the
        # whole current state, and a lookup must fail fast rather than stall a client.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._redis = aioredis.from_url(url, decode_responses=True, socket_timeout=timeout,
                                        socket_connect_timeout=timeout, retry=retry)
        self._register = self._redis.register_script(REGISTER_SCRIPT)
        self._unregister = self._redis.register_script(UNREGISTER_SCRIPT)
        self._lookup = self._redis.register_script(LOOKUP_SCRIPT)
        # What this process holds (the truth re-asserted into Redis) and what
        # it released but has not yet deleted from Redis.
        self._held: dict[str, int] = {}
        self._released: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._changed = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.reachable: bool | None = None  # None: not tried yet
        self.errors = 0
        self.reasserted = 0
        self.fenced = 0

    # -- Presence ------------------------------------------------------------------
    def register(self, cluster_id: str, session_id: int) -> None:
        if self._held.get(cluster_id, 0) > session_id:
            return
        self._held[cluster_id] = session_id
        self._released.pop(cluster_id, None)  # the newer registration overwrites it
        self._mark(cluster_id)

    def unregister(self, cluster_id: str, session_id: int) -> None:
        if self._held.get(cluster_id) != session_id:
            return
        del self._held[cluster_id]
        self._released[cluster_id] = session_id
        self._mark(cluster_id)

    async def lookup(self, cluster_id: str) -> list[Route]:
        try:
            flat = await self._lookup(keys=[presence_key(cluster_id)])
        except STORE_ERRORS as exc:
            self._failed(exc)
            raise PresenceUnavailable(f"presence store {redacted_url(self.url)} did not answer: "
                                      f"{type(exc).__name__}") from exc
        routes = (parse_route(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2))
        return sorted((r for r in routes if r is not None), reverse=True)

    async def live_clusters(self, cluster_ids: Sequence[str]) -> set[str]:
        """Which of ``cluster_ids`` have a live route (one pipeline per
        ``LOOKUP_CHUNK`` ids: ``arcctl list`` of many clusters is a few round trips)."""
        live: set[str] = set()
        try:
            for start in range(0, len(cluster_ids), LOOKUP_CHUNK):
                chunk = cluster_ids[start:start + LOOKUP_CHUNK]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for cid in chunk:
                        await self._lookup(keys=[presence_key(cid)], client=pipe)
                    answers = await pipe.execute()
                live.update(cid for cid, flat in zip(chunk, answers, strict=True) if flat)
        except STORE_ERRORS as exc:
            self._failed(exc)
            raise PresenceUnavailable(f"presence store {redacted_url(self.url)} did not answer: "
                                      f"{type(exc).__name__}") from exc
        return live

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="presence-writer")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
            if self.reachable and (self._dirty or self._released):
                # The last changes (sessions ended by the shutdown); bounded by
                # the client's timeouts, and a failure only leaves routes to lapse.
                with contextlib.suppress(*STORE_ERRORS):
                    await self._write(set(self._dirty) | set(self._released), full=False)
        await self._redis.aclose()

    # -- what tests and metrics read ------------------------------------------------
    def held(self) -> dict[str, int]:
        """Cluster id -> session id of every registration this process holds (a copy)."""
        return dict(self._held)

    async def flush(self) -> None:
        """Write every pending change now (tests; the writer task does it by itself).

        Raises:
            redis.exceptions.RedisError, OSError, TimeoutError: the write failed.
        """
        await self._write(set(self._dirty) | set(self._released), full=False)

    async def refresh(self) -> None:
        """Re-write every registration now, as the writer task does every
        refresh period (benchmarks).

        Raises:
            redis.exceptions.RedisError, OSError, TimeoutError: the write failed.
        """
        await self._write(set(self._held) | set(self._released), full=True)

    # -- the writer task -------------------------------------------------------------
    def _mark(self, cluster_id: str) -> None:
        self._dirty.add(cluster_id)
        self._changed.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time()
        while True:
            if self.reachable is False:
                # Retry on a timer only: a burst of changes must not become a
                # burst of failing connects.
                await asyncio.sleep(self.retry_seconds)
                full = True
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_refresh - loop.time())):
                        await self._changed.wait()
                full = loop.time() >= next_refresh
            self._changed.clear()
            clusters = set(self._held) | set(self._released) if full else set(self._dirty) | set(self._released)
            try:
                await self._write(clusters, full=full)
            except STORE_ERRORS as exc:
                self._failed(exc)
                continue
            if full:
                next_refresh = loop.time() + self.refresh_seconds

    async def _write(self, clusters: set[str], *, full: bool) -> None:
        """Bring ``clusters`` in Redis up to date with memory, in pipelines of
        ``MAX_PIPELINE`` (a lone PING when there is nothing to write, so
        reachability is known)."""
        async with self._write_lock:
            was_reachable = self.reachable
            ordered = sorted(clusters)
            # Changes made from here on are marked dirty again and written next time.
            fresh = clusters & self._dirty
            self._dirty -= clusters
            lost = 0
            try:
                for start in range(0, max(1, len(ordered)), MAX_PIPELINE):
                    lost += await self._write_chunk(ordered[start:start + MAX_PIPELINE], fresh)
            except BaseException:
                self._dirty |= clusters
                raise
            self.reasserted += lost
            if lost and was_reachable:
                log.warning("presence routes re-asserted count=%d reason='missing from the store "
                            "(Redis restarted or flushed)'", lost)
            self._recovered(was_reachable, lost)

    async def _write_chunk(self, clusters: list[str], fresh: set[str]) -> int:
        """One pipeline of ``clusters``' current state; how many registrations
        the store had lost (written before, missing now)."""
        ttl_ms = str(max(1, round(self.ttl_seconds * 1000)))
        writes: list[tuple[str, int, bool]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for cid in clusters:
                key = presence_key(cid)
                if (held := self._held.get(cid)) is not None:
                    await self._register(keys=[key], args=[self.replica_id, held, self.address, ttl_ms],
                                         client=pipe)
                    writes.append((cid, held, True))
                elif (released := self._released.get(cid)) is not None:
                    await self._unregister(keys=[key], args=[self.replica_id, released], client=pipe)
                    writes.append((cid, released, False))
            if not writes:
                pipe.ping()
            results = await pipe.execute()
        lost = 0
        for (cid, session_id, registered), result in zip(writes, results, strict=False):
            if not registered:
                if self._released.get(cid) == session_id:
                    del self._released[cid]
            elif result == 0:
                self._fenced(cid, session_id)
            elif result == 2 and cid not in fresh:
                lost += 1  # we had written it: the store lost it
        return lost

    def _fenced(self, cluster_id: str, session_id: int) -> None:
        """A newer session under our replica id holds the cluster: stop
        advertising ours (another process uses this replica id)."""
        self.fenced += 1
        if self._held.get(cluster_id) == session_id:
            del self._held[cluster_id]
        log.warning("presence registration fenced cluster=%s session=%d replica=%s reason='a newer "
                    "session holds this replica id: is presence.replica_id shared by two relays?'",
                    cluster_id, session_id, self.replica_id)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.reachable is not False:
            log.warning("presence store unreachable url=%s error=%r: local sessions are still served; "
                        "routes are re-asserted when it is back", redacted_url(self.url),
                        f"{type(exc).__name__}: {exc}"[:200])
        self.reachable = False

    def _recovered(self, was_reachable: bool | None, reasserted: int) -> None:
        self.reachable = True
        if was_reachable is False:
            log.info("presence store reachable again url=%s routes=%d reasserted=%d",
                     redacted_url(self.url), len(self._held), reasserted)

