"""Fixtures shared by the kube-aad-proxy tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.kube_aad_proxy import RecordingUpstream
from tests.support.pki import Pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A CA with the proxy's serving and the upstream's certificates (one per module)."""
    return Pki.create()


@pytest.fixture
async def upstream(pki: Pki) -> AsyncIterator[RecordingUpstream]:
    """A recording stand-in for the API server behind the proxy."""
    up = RecordingUpstream(pki)
    await up.start()
    yield up
    await up.stop()
