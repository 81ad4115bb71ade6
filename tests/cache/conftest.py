"""Private `redis-server` processes for the cache tests, one per tier (the
`redis_servers` fixture of tests/conftest.py): tests stop and restart them to
prove the tiers fail and recover without the service noticing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture
def local_redis(redis_servers: Callable[[], RedisServer]) -> RedisServer:
    return redis_servers()


@pytest.fixture
def global_redis(redis_servers: Callable[[], RedisServer]) -> RedisServer:
    server = redis_servers()
    server.db = 1
    return server
