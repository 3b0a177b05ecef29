"""/readyz's database check: a periodic ping with a timeout, read by the probe."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay import SqliteDatabase, SqliteRegistry
from relay.database_health import DatabaseHealth


async def test_database_health_reports_a_stalled_ping_as_unreachable() -> None:
    """A ping that never answers counts as a failure after the timeout, and
    the probe says so; an answering ping makes it ready again."""
    stalled = asyncio.Event()
    answering = False

    async def ping() -> bool:
        if not answering:
            await stalled.wait()  # a database that accepted the query and never answers
        return True

    health = DatabaseHealth(ping, interval=3600.0, timeout=0.05)
    await health.start()
    try:
        assert not health.reachable and health.problem() == "database unreachable"
        answering = True
        assert await health.check() and health.problem() is None
    finally:
        await health.stop()


async def test_database_health_of_a_sqlite_registry(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "r.db")
    health = DatabaseHealth(SqliteRegistry(db).ping, interval=3600.0)
    try:
        await health.start()
        assert health.problem() is None and health.pings == 1
    finally:
        await health.stop()
        db.close()
