"""Dependency checks for /health and readiness."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from potok_state.cache import TieredCache
from potok_state.storage.port import (
    StateStore,
)

CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    up: bool
    latency_ms: float
    error: str | None = None


class HealthService:
    def __init__(
        self, store: StateStore, *, version: str, cache: TieredCache | None = None
    ) -> None:
        self.store = store
        self.version = version
        self.cache = cache
        self.started = time.monotonic()

    async def check_storage(self) -> Check:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.store.ping(), CHECK_TIMEOUT_SECONDS)
        except Exception as exc:  # any failure means "down"; the reason is reported
            return Check("storage", False, _since(started), f"{type(exc).__name__}: {exc}"[:300])
        return Check("storage", True, _since(started))

    async def check_cache(self) -> list[Check]:
        """One check per configured Redis tier (`redisLocal`, `redisGlobal`); a tier
        that is down degrades the service but never makes it unready."""
        if self.cache is None:
            return []
        return [
            Check("redis" + tier.name.capitalize(), tier.up, tier.latency_ms, tier.error)
            for tier in await self.cache.health()
        ]

    def uptime_seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
