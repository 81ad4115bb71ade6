"""The one Redis client factory: every Redis connection of the service is made here,
with explicit timeouts and no hidden retries (a caller that wants to retry says so)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from potok_state.settings import RedisTierSettings


def redis_client(
    settings: RedisTierSettings,
    *,
    socket_timeout: float | None,
    connect_timeout: float | None,
    health_check_interval: int = 0,
) -> Redis:
    """A client for one Redis tier; timeouts are in seconds (None: wait forever)."""
    return Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=health_check_interval,
        decode_responses=False,
        # Off: the handshake for them fails on every connection to a server
        # without them (a debug log line each), and the tiers do not use them.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
