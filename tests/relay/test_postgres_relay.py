"""A relay on PostgreSQL (a real server, tests/support/postgres.py): config,
an agent connecting, the management API, /readyz and a restart."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from relay import ConfigError, relay_config_from_dict
from relay.status import LiveStatusRegistry
from tests.support.relay import running_env
from tests.support.servers import refusing_port


def test_database_section_configures_postgresql(tmp_path: Path) -> None:
    """`database: {url, password_file}` selects PostgreSQL; the password file
    path is resolved; a plain string stays the SQLite file."""
    config = relay_config_from_dict({"database": {"url": "postgresql://relay@db.example:5432/arc",
                                                  "password_file": "pw"}}, base_dir=tmp_path)
    assert config.database_url == "postgresql://relay@db.example:5432/arc"
    assert config.database_password_file == str(tmp_path / "pw")
    assert relay_config_from_dict({"database": "x.db"}, base_dir=tmp_path).database == str(tmp_path / "x.db")
    assert relay_config_from_dict({}).database_url is None


def test_database_url_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        relay_config_from_dict({"database": {"url": "postgresql://relay:hunter2@db:5432/arc"}})
    assert "password_file" in str(caught.value) and "hunter2" not in str(caught.value)


async def test_relay_on_postgresql_serves_an_agent_and_keeps_state_across_restart(
        tmp_path: Path, postgres_dsn: str) -> None:
    async with running_env(tmp_path, database_url=postgres_dsn) as env:
        assert isinstance(env.state.registry, LiveStatusRegistry)
        assert type(env.state.registry.store).__name__ == "PostgresRegistry"
        keys = await env.register("rg1", "alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9))
        await env.wait_agent("rg1/alpha")
        status, body = await env.api("GET", "/api/v1/resourceGroups/rg1/clusters/alpha", env.token("admin"))
        assert status == 200 and body["connectivityStatus"] == "Connected"
        async with aiohttp.ClientSession() as http, http.get(env.relay.health_url + "/readyz") as resp:
            assert resp.status == 200
        await env.restart_relay()
        status, body = await env.api("GET", "/api/v1/resourceGroups/rg1/clusters/alpha", env.token("admin"))
        assert status == 200 and body["name"] == "alpha"


async def test_relay_with_unreachable_postgresql_fails_with_one_line(tmp_path: Path) -> None:
    with refusing_port() as port:
        with pytest.raises(ConfigError) as caught:
            async with running_env(tmp_path, database_url=f"postgresql://relay@127.0.0.1:{port}/arc"):
                pass
    message = str(caught.value)
    assert "cannot connect to database" in message and "\n" not in message
