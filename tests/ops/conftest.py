"""Fixtures for the operations tests: private Redis servers and webhook receivers
(the same real processes and servers the cache and webhook tests use)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cache.conftest import redis_servers as redis_servers  # the same fixture
from tests.webhooks.receivers import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = Receiver()
    await started.start()
    yield started
    await started.stop()
