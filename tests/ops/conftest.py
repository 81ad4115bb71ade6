"""Fixtures for the operations tests: private Redis servers and webhook receivers
(the same real processes and servers the cache and webhook tests use)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.cache.conftest import RedisServer
from tests.webhooks.receivers import Receiver


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start as many private redis-server processes as a test needs."""
    started: list[RedisServer] = []

    def start() -> RedisServer:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        server = RedisServer(workdir)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = Receiver()
    await started.start()
    yield started
    await started.stop()
