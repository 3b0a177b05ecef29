"""Fixtures shared by the relay tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.relay.harness import RelayEnv, running_env


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A started relay and sandbox issuer (a module may override it with its own limits)."""
    async with running_env(tmp_path) as env:
        yield env
