"""Dependency checks for /health and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from potok_state.cache import TieredCache
from potok_state.external.replicator import Replicator, SyncStatus
from potok_state.storage.port import (
    StateStore,
)
from potok_state.stream.publisher import StreamPublisher, StreamState, StreamStatus

CHECK_TIMEOUT_SECONDS = 2.0
REDIS_CHECK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    up: bool
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ExternalCheck:
    """The Admin Service as checked now, and how far it is behind the journal."""

    check: Check
    status: SyncStatus

    @property
    def blocks_writes(self) -> bool:
        """Down with the backlog full: writes are refused until it returns."""
        return not self.check.up and self.status.full


class HealthService:
    def __init__(
        self,
        store: StateStore,
        *,
        version: str,
        cache: TieredCache | None = None,
        external: Replicator | None = None,
        stream: StreamPublisher | None = None,
    ) -> None:
        self.store = store
        self.version = version
        self.cache = cache
        self.external = external
        self.stream = stream
        self.started = time.monotonic()

    async def check_storage(self) -> Check:
        return await _checked("storage", self.store.ping())

    async def check_cache(self) -> list[Check]:
        """One check per configured Redis tier (`redisLocal`, `redisGlobal`); a tier
        that is down degrades the service but never makes it unready."""
        if self.cache is None:
            return []
        checks = (
            _checked("redis" + tier.name.capitalize(), tier.ping(), REDIS_CHECK_SECONDS)
            for tier in self.cache.tiers
        )
        return list(await asyncio.gather(*checks))

    async def check_external(self) -> ExternalCheck | None:
        """The Admin Service's health endpoint, unless its circuit is open (then
        it is down without a call); None when states are kept in SQL."""
        if self.external is None:
            return None
        admin = self.external.admin
        if admin.breaker.is_open:
            check = Check("externalDb", False, 0.0, "circuit open: the Admin Service kept failing")
        else:
            check = await _checked("externalDb", admin.health())
        with contextlib.suppress(Exception):  # the storage check reports the database
            await self.external.measure()
        return ExternalCheck(check, self.external.status())

    async def check_stream(self) -> StreamStatus | None:
        """The event stream's publisher against the outbox (docs/stream.md); None
        when NATS_URL is not set, or when the database cannot tell (the storage
        check reports that)."""
        if self.stream is None:
            return None
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                return await self.stream.status()
        except Exception as exc:
            return StreamStatus(
                state=StreamState.DEGRADED,
                stream=self.stream.settings.stream,
                revision=0,
                backlog=0,
                lag_seconds=0.0,
                publisher=None,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )

    def uptime_seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)


async def _checked(
    name: str, probe: Awaitable[None], seconds: float = CHECK_TIMEOUT_SECONDS
) -> Check:
    """Up when `probe` completes within `seconds`; any failure means down,
    with the reason."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            await probe
    except Exception as exc:
        return Check(name, False, _since(started), f"{type(exc).__name__}: {exc}"[:300])
    return Check(name, True, _since(started))


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
