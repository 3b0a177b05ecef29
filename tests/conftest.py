"""Shared fixtures and settings.

``idp`` (the sandbox OIDC issuer) and ``relay_env`` (a relay with that issuer)
live here, once, for every test directory; a module that needs a relay with
other limits declares its own ``relay_env`` around ``running_env``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from sandbox.idp import SandboxIdp
    from tests.support.postgres import PostgresServer
    from tests.support.relay import RelayEnv

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Child processes started by tests run the same interpreter and see the repo.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

# Wall-clock deadlines make property tests flaky on a loaded 2-core machine;
# correctness, not speed, is what they check (speed lives in bench/).
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# The fixtures import lazily: the tunnel tests never pay for the relay's imports.
@pytest.fixture
async def idp(tmp_path: Path) -> AsyncIterator[SandboxIdp]:
    """The sandbox OIDC issuer on 127.0.0.1 (port 0), state under ``tmp_path``."""
    from sandbox.idp import SandboxIdp

    server = SandboxIdp(tmp_path / "idp", host="127.0.0.1", port=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A started relay and sandbox issuer with default limits."""
    from tests.support.relay import running_env

    async with running_env(tmp_path) as env:
        yield env


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (skips when not installed)."""
    from tests.support.postgres import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    from tests.support.postgres import create_database

    return create_database(postgres_server)
