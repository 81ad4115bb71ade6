"""Retention (docs/operations.md, "Retention"): a background task of `serve`
that deletes, in small batches and one short transaction each, what is no
longer needed:

* succeeded webhook deliveries and their attempts, RETENTION_DELIVERIES_TTL
  after they were queued; failed and skipped ones stay for retry and
  `replay?missing=true` as long as their event is kept, and go after that
  (they can no longer be sent);
* change feed events (the outbox) older than RETENTION_OUTBOX_TTL, as a prefix
  only, so the feed never has holes: never an event the dispatcher has not
  turned into deliveries yet, nor one a pending delivery of an active
  subscription still has to send, nor, while the event stream is on, one the
  stream publisher has not published yet (docs/stream.md);
  revisions below the oldest kept one answer 410 `revision_pruned`;
* idempotency records older than IDEMPOTENCY_TTL (they replay nothing any more);
* history older than HISTORY_RETENTION, only when it is set (and, with the
  external backend, only what the Admin Service already has); `history_horizon`
  records how far.

Several processes may prune at once: every delete is idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import structlog

from potok_state.background import BackgroundLoop
from potok_state.clock import utc_now
from potok_state.settings import RetentionSettings
from potok_state.storage.database import Tx
from potok_state.storage.sql import SqlStateStore

log = structlog.get_logger("potok_state.retention")

# Batches in one round before the pruner yields to the next round: a large
# backlog drains over several rounds instead of holding the writer.
MAX_BATCHES_PER_ROUND = 100


@dataclass(slots=True)
class Pruned:
    deliveries: int = 0
    outbox: int = 0
    idempotency_keys: int = 0
    history: int = 0

    def counts(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @property
    def total(self) -> int:
        return sum(self.counts().values())


class Pruner:
    def __init__(
        self,
        store: SqlStateStore,
        settings: RetentionSettings,
        *,
        idempotency_ttl: int,
        keep_unpublished: bool = False,
    ) -> None:
        self.db = store.db
        self.keep_unpublished = keep_unpublished
        self.dialect = store.dialect
        self.settings = settings
        self.idempotency_ttl = idempotency_ttl
        self._delivery_cursor = 0
        self._loop = BackgroundLoop("retention", self._run)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            try:
                pruned = await self.prune()
                if pruned.total:
                    log.info("retention.pruned", **pruned.counts())
            except Exception:
                log.exception("retention.failed")
            await asyncio.sleep(self.settings.delay / 1000)

    async def prune(self) -> Pruned:
        """One round: every kind, batch after batch until one comes back short."""
        now = utc_now()
        settings = self.settings
        pruned = Pruned()
        pruned.deliveries = await self._batches(
            lambda: self._prune_deliveries(now - timedelta(seconds=settings.deliveries_ttl))
        )
        pruned.outbox = await self._batches(
            lambda: self._prune_outbox(now - timedelta(seconds=settings.outbox_ttl))
        )
        pruned.idempotency_keys = await self._batches(
            lambda: self._prune_idempotency(now - timedelta(seconds=self.idempotency_ttl))
        )
        if settings.history_ttl is not None:
            cutoff = now - timedelta(seconds=settings.history_ttl)
            pruned.history = await self._batches(lambda: self._prune_history(cutoff))
        return pruned

    async def _batches(self, batch: Callable[[], Awaitable[tuple[int, bool]]]) -> int:
        total = 0
        for _ in range(MAX_BATCHES_PER_ROUND):
            deleted, more = await batch()
            total += deleted
            if not more:
                break
            await asyncio.sleep(0)
        return total

    async def _prune_deliveries(self, cutoff: datetime) -> tuple[int, bool]:
        """Walk the deliveries by id from where the last batch stopped; a pass
        ends at the first one queued after the cutoff (ids grow with time)."""
        dialect, limit = self.dialect, self.settings.batch

        async def work(tx: Tx) -> tuple[int, bool]:
            rows = await tx.fetch(
                "SELECT id, status, revision, created_at FROM webhook_deliveries WHERE id > $1 "
                "ORDER BY id LIMIT $2",
                self._delivery_cursor,
                limit,
            )
            oldest_event = await tx.fetchval("SELECT min(revision) FROM outbox")
            # Events below this one were pruned: their deliveries cannot be sent again.
            kept_from = 2**62 if oldest_event is None else int(oldest_event)
            done: list[int] = []
            more = len(rows) == limit
            for row in rows:
                if dialect.read_time(row["created_at"]) >= cutoff:
                    more = False
                    break
                self._delivery_cursor = row["id"]
                if row["status"] == "succeeded" or (
                    row["status"] in ("failed", "skipped") and row["revision"] < kept_from
                ):
                    done.append(row["id"])
            if not more:
                self._delivery_cursor = 0
            deleted: list[int] = []
            if done:
                # Not one that was requeued meanwhile.
                gone = await tx.fetch(
                    f"DELETE FROM webhook_deliveries WHERE id {dialect.in_ints('$1')} "
                    "AND status <> 'pending' RETURNING id",
                    dialect.int_list(done),
                )
                deleted = [row["id"] for row in gone]
            if deleted:
                await tx.execute(
                    f"DELETE FROM webhook_attempts WHERE delivery_id {dialect.in_ints('$1')}",
                    dialect.int_list(deleted),
                )
            return len(deleted), more

        return await self.db.write(work)

    async def _prune_outbox(self, cutoff: datetime) -> tuple[int, bool]:
        dialect, limit = self.dialect, self.settings.batch

        async def work(tx: Tx) -> tuple[int, bool]:
            bounds = [
                await tx.fetchval("SELECT revision FROM webhook_dispatch_cursor WHERE id = 1"),
                # A subscription paused for good must not pin the feed: its
                # deliveries fail when resumed if their events are gone.
                await tx.fetchval(
                    "SELECT min(d.revision) FROM webhook_deliveries d WHERE d.status = 'pending' "
                    "AND EXISTS (SELECT 1 FROM webhook_subscriptions s "
                    "WHERE s.id = d.subscription_id AND s.active)"
                ),
                await tx.fetchval(
                    "SELECT min(revision) - 1 FROM outbox WHERE created_at >= $1",
                    dialect.time(cutoff),
                ),
            ]
            # Everything up to `keep_below` - 1 may go: dispatched, not pending, old.
            dispatched = int(bounds[0] or 0)
            keep_below = min(
                dispatched + 1,
                int(bounds[1]) if bounds[1] is not None else dispatched + 1,
                int(bounds[2]) + 1 if bounds[2] is not None else dispatched + 1,
            )
            if self.keep_unpublished:
                published = await tx.fetchval("SELECT revision FROM stream_publisher WHERE id = 1")
                keep_below = min(keep_below, int(published or 0) + 1)
            deleted = await tx.execute(
                "DELETE FROM outbox WHERE revision IN (SELECT revision FROM outbox "
                "WHERE revision < $1 ORDER BY revision LIMIT $2)",
                keep_below,
                limit,
            )
            return deleted, deleted == limit

        return await self.db.write(work)

    async def _prune_idempotency(self, cutoff: datetime) -> tuple[int, bool]:
        limit = self.settings.batch

        async def work(tx: Tx) -> tuple[int, bool]:
            deleted = await tx.execute(
                "DELETE FROM idempotency_keys WHERE scope IN (SELECT scope FROM idempotency_keys "
                "WHERE created_at < $1 LIMIT $2)",
                self.dialect.time(cutoff),
                limit,
            )
            return deleted, deleted == limit

        return await self.db.write(work)

    async def _prune_history(self, cutoff: datetime) -> tuple[int, bool]:
        """The oldest rows by revision, up to the first one newer than the
        cutoff; the horizon moves with them, in the same transaction (reads as
        of a revision tell "pruned" from "did not exist" by it)."""
        dialect, limit = self.dialect, self.settings.batch

        async def work(tx: Tx) -> tuple[int, bool]:
            rows = await tx.fetch(
                "SELECT revision, changed_at FROM state_history ORDER BY revision LIMIT $1", limit
            )
            # With the external backend the history is also its journal
            # (docs/external.md): nothing the Admin Service does not have yet.
            synced = await tx.fetchval("SELECT revision FROM external_sync WHERE id = 1")
            last = None
            for row in rows:
                if dialect.read_time(row["changed_at"]) >= cutoff:
                    break
                if synced is not None and row["revision"] > int(synced):
                    break
                last = row
            if last is None:
                return 0, False
            deleted = await tx.execute(
                "DELETE FROM state_history WHERE revision <= $1", last["revision"]
            )
            await tx.execute(_RAISE_HORIZON, last["revision"], last["changed_at"])
            return deleted, deleted == limit

        return await self.db.write(work)


_RAISE_HORIZON = (
    "INSERT INTO history_horizon (id, revision, changed_at) VALUES (1, $1, $2) "
    "ON CONFLICT (id) DO UPDATE SET revision = excluded.revision, "
    "changed_at = excluded.changed_at WHERE history_horizon.revision < excluded.revision"
)
