"""The lease reaper: every `serve` process looks for lapsed leases a few times a
second and applies their lapse (`StateService.expire_leases`). Every process
may find the same lease; the versioned write lets exactly one of them change
the state (docs/leases.md, "Exactly once")."""

from __future__ import annotations

import asyncio

import structlog

from potok_state.background import BackgroundLoop
from potok_state.states.service import StateService
from potok_state.storage.port import StateStore

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.25
# Lapsed leases taken per round. A round waits on the loop several times (the
# due read, the reads and writes of its change sets), and the embedded webhook
# worker shares that loop: 10,000 leases lapsing together were written 0.2-0.5 s
# sooner in two rounds than in five (bench/REPORT.md, analysis of the 09:41 run).
DUE_BATCH = 5000
RETRY_AFTER_ERROR = 1.0


class LeaseReaper:
    def __init__(
        self, store: StateStore, states: StateService, *, poll_seconds: float = POLL_SECONDS
    ) -> None:
        self.store = store
        self.states = states
        self.poll_seconds = poll_seconds
        self._loop = BackgroundLoop("lease-reaper", self._run)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            try:
                due = await self.store.due_leases(DUE_BATCH)
                if due.keys:
                    changed = await self.states.expire_leases(due)
                    log.info("lease.expired", due=len(due.keys), changed=changed)
                    if len(due.keys) == DUE_BATCH:
                        continue  # more are due: no pause
            except Exception as exc:  # the store is down: try again, nothing is lost
                log.warning("lease.reap_failed", error=type(exc).__name__)
                await asyncio.sleep(RETRY_AFTER_ERROR)
                continue
            await asyncio.sleep(self.poll_seconds)
