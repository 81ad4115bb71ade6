"""Fixtures for the operations tests: webhook receivers (private Redis servers
come from the `redis_servers` fixture of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.receivers import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = Receiver()
    await started.start()
    yield started
    await started.stop()
