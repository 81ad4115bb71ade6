"""The Redis client factory (cache/connection.py) against a real redis-server:
a connection says nothing at LOG_LEVEL=debug (redis-py's handshake for
maintenance notifications failed on every connection, one debug line each)."""

from __future__ import annotations

import logging

import pytest

from potok_state.cache.connection import redis_client
from potok_state.settings import RedisLocalSettings
from tests.support.redis_server import RedisServer


async def test_a_connection_logs_nothing_at_debug_level(
    local_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redis")
    settings = RedisLocalSettings(host="127.0.0.1", port=local_redis.port)
    client = redis_client(settings, socket_timeout=1, connect_timeout=1)
    try:
        await client.set("greeting", b"hello")
        assert await client.get("greeting") == b"hello"
    finally:
        await client.aclose()
    said = [record.getMessage() for record in caplog.records if record.name.startswith("redis")]
    assert said == []
