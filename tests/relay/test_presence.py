"""Presence without Redis: session ids, the in-memory default, and the
directory that mirrors the relay's live sessions into presence."""

from __future__ import annotations

import math
import threading
import time

import pytest

from relay.config import ConfigError, relay_config_from_dict
from relay.directory import LocalDirectory
from relay.presence import MemoryPresence, PresenceConfig, PresenceDirectory, Route, SessionIds


def test_session_ids_are_strictly_increasing_across_threads() -> None:
    """Fencing ids never repeat and never go back, even taken from several threads."""
    ids = SessionIds()
    taken: list[list[int]] = [[] for _ in range(4)]

    def take(out: list[int]) -> None:
        out.extend(ids.next() for _ in range(2000))

    threads = [threading.Thread(target=take, args=(out,)) for out in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in taken:
        assert out == sorted(out)
    every = [i for out in taken for i in out]
    assert len(set(every)) == len(every)
    # A "restarted" process starts above. Ids taken faster than one per
    # microsecond run ahead of the clock (8,000 here in a few ms on a quiet
    # machine); a restart takes longer than that lead, so wait it out.
    while time.time_ns() // 1000 <= max(every):
        time.sleep(0.001)
    assert SessionIds().next() > max(every)


async def test_memory_presence_is_fenced_by_session_id() -> None:
    """An older session id neither overwrites nor removes a newer registration."""
    presence = MemoryPresence("r1", "relay-a:8443")
    presence.register("rg/a", 20)
    presence.register("rg/a", 10)
    presence.unregister("rg/a", 10)
    assert await presence.lookup("rg/a") == [Route(20, "r1", "relay-a:8443", math.inf)]
    presence.unregister("rg/a", 20)
    assert await presence.lookup("rg/a") == []


async def test_presence_directory_keeps_the_new_route_when_a_replaced_session_ends() -> None:
    """A reconnecting agent replaces its old session; the old one ending later
    (its drain) removes neither the local session nor the new route."""
    presence = MemoryPresence("r1", "relay-a:8443")
    directory = PresenceDirectory(LocalDirectory[object](), presence, SessionIds())
    old, new = object(), object()
    assert directory.register("rg/a", old) is None
    old_id = directory.session_id(old)
    assert directory.register("rg/a", new) is old
    new_id = directory.session_id(new)
    assert old_id is not None and new_id is not None and new_id > old_id
    assert directory.session_id(old) is None  # not live any more: nothing kept for it
    assert directory.unregister("rg/a", old) is False
    assert [r.session_id for r in await presence.lookup("rg/a")] == [new_id]
    assert directory.get("rg/a") is new
    assert directory.unregister("rg/a", new) is True
    assert await presence.lookup("rg/a") == []
    assert presence.held() == {}


def test_relay_config_reads_the_presence_section_and_refuses_a_wrong_url() -> None:
    """``presence`` reaches RelayConfig; no section is the in-memory default; a
    URL of another scheme is one line naming the key, without the URL itself."""
    assert relay_config_from_dict({}).presence == PresenceConfig()
    config = relay_config_from_dict({"presence": {
        "redis_url": "redis://:pw@redis:6379/0", "ttl_seconds": 6, "replica_id": "relay-0",
        "advertise": "relay-0.relay:8443"}})
    assert config.presence == PresenceConfig("redis://:pw@redis:6379/0", 6.0, "relay-0", "relay-0.relay:8443")
    with pytest.raises(ConfigError) as caught:
        relay_config_from_dict({"presence": {"redis_url": "http://:hunter2@redis:6379"}})
    assert "presence.redis_url" in str(caught.value) and "hunter2" not in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"presence\.advertise"):
        relay_config_from_dict({"presence": {"advertise": "relay-0"}})
