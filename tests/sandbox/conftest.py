"""Fixtures for sandbox tests: one in-process sandbox API server per module
(``tests/support/sandbox.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import RunningApiServer, start_apiserver, stop_apiserver


@pytest.fixture(scope="module")
def sandbox_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApiServer]:
    """One API server (reporting 1.33.0) shared by the tests of a module."""
    running = start_apiserver(tmp_path_factory.mktemp("apiserver"))
    try:
        yield running
    finally:
        stop_apiserver(running)


@pytest.fixture(scope="module")
def admin_kubeconfig(sandbox_apiserver: RunningApiServer) -> Path:
    """The admin kubeconfig (static token, system:masters) of ``sandbox_apiserver``."""
    return sandbox_apiserver.kubeconfig
