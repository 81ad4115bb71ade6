"""Settings for the Redis cache tiers under test, and reading the cache metrics."""

from __future__ import annotations

from fastapi import FastAPI

from potok_state.settings import Settings
from tests.conftest import make_settings
from tests.support.redis_server import RedisServer


def cache_settings(
    database_url: str,
    *,
    local: RedisServer | None = None,
    global_: RedisServer | None = None,
    **overrides: object,
) -> Settings:
    values: dict[str, object] = {
        # Generous for a shared 2-core machine; the circuit retries quickly. These
        # tests exercise the Redis tiers, so the near cache in front of them is off
        # (tests/cache/test_near_cache.py covers it).
        "cache": {"timeout": 500, "retry_delay": 200, "near_size": 0},
        "redis_local": {"enabled": local is not None},
        "redis_global": {"enabled": global_ is not None},
    }
    if local is not None:
        values["redis_local"] = {"enabled": True, "host": "127.0.0.1", "port": local.port}
    if global_ is not None:
        values["redis_global"] = {"enabled": True, "host": "127.0.0.1", "port": global_.port}
    values.update(overrides)
    values["cache"] = {"near_size": 0, **values["cache"]}  # type: ignore[dict-item]
    return make_settings(database_url, **values)


def cache_requests(app: FastAPI, tier: str, result: str) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "potok_cache_requests_total", {"tier": tier, "result": result}
    )
    return float(value or 0.0)
