"""Draining the journal into the Admin Service (docs/external.md).

Every accepted change is in the local journal (the SQL store's history, with
its revision) before its request is answered. One process at a time — the one
holding the `external_sync` lease — reads the history after the replication
cursor in revision order and writes it to the Admin Service: each history
record as its own document (its id is the revision, so a re-sent record is
recognised by the 409), then each entity's latest state. The cursor moves only
after a whole batch is in, so a crash, an outage or a refusal re-drives the
batch from the start; every write is idempotent, so a re-drive only repeats
what was there. Entities of a batch are written concurrently, the records of
one entity one after another, so the Admin Service sees each entity's changes
in order.

Every process measures the backlog (records after the cursor) a few times a
second; writes are refused with 503 while it is at `EXTERNAL_DB_MAX_BACKLOG`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from potok_state.background import BackgroundLoop
from potok_state.changes.model import EventType
from potok_state.clock import utc_now
from potok_state.external.client import (
    AdminServiceClient,
    AdminServiceRejected,
    Json,
)
from potok_state.kit.errors import Unavailable
from potok_state.storage.cursor_lease import claim_cursor
from potok_state.storage.database import Row, Tx
from potok_state.storage.port import WriteTicket
from potok_state.storage.sql import SqlStateStore

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.25
BATCH = 500
CONCURRENCY = 16
LEASE_SECONDS = 5.0
RENEW_SECONDS = 1.0
UNAVAILABLE_PAUSE = (0.25, 5.0)
REJECTED_PAUSE = (2.0, 60.0)


class ExternalBacklogFull(Unavailable):
    code = "external_backlog_full"


@dataclass(frozen=True, slots=True)
class SyncStatus:
    backlog: int
    oldest_unsynced_seconds: float | None
    full: bool
    last_error: str | None


class ExternalMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "potok_external_requests_total",
            "Admin Service calls by outcome (ok, retried, rejected, failed, short_circuited).",
            ["outcome"],
            registry=registry,
        )
        self.backlog = Gauge(
            "potok_external_backlog",
            "Accepted changes not yet written to the Admin Service.",
            registry=registry,
        )
        self.oldest_unsynced = Gauge(
            "potok_external_oldest_unsynced_seconds",
            "Age of the oldest change not yet written to the Admin Service (0: none).",
            registry=registry,
        )
        self.circuit_open = Gauge(
            "potok_external_circuit_open",
            "1 while calls to the Admin Service are paused by the circuit breaker.",
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class Record:
    """One history row as the Admin Service stores it, with the entity's
    creation time as the journal knows it."""

    revision: int
    entity: str
    entity_id: str
    version: int
    event: str
    previous_status: str | None
    new_status: str | None
    metadata: Any
    reason: str | None
    actor: str
    changed_at: str
    created_at: str | None

    @property
    def state_id(self) -> str:
        return f"{self.entity}:{self.entity_id}"

    def history_document(self) -> Json:
        return {
            "id": str(self.revision),
            "revision": self.revision,
            "entityType": self.entity,
            "entityId": self.entity_id,
            "version": self.version,
            "event": self.event,
            "previousStatus": self.previous_status,
            "newStatus": self.new_status,
            "metadata": self.metadata,
            "reason": self.reason,
            "actor": self.actor,
            "changedAt": self.changed_at,
        }

    def state_document(self, created_at: str) -> Json:
        return {
            "id": self.state_id,
            "entityType": self.entity,
            "entityId": self.entity_id,
            "status": self.new_status,
            "metadata": self.metadata,
            "version": self.version,
            "revision": self.revision,
            "createdAt": created_at,
            "updatedAt": self.changed_at,
        }


class Replicator:
    def __init__(
        self,
        store: SqlStateStore,
        admin: AdminServiceClient,
        *,
        states_collection: str,
        history_collection: str,
        max_backlog: int,
        metrics: ExternalMetrics,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.admin = admin
        self.states_collection = states_collection
        self.history_collection = history_collection
        self.max_backlog = max_backlog
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.holder = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._counted = 0
        self._counted_head = 0
        self._running = 0
        self._uncounted: list[int] = []
        self.oldest_unsynced_at: datetime | None = None
        self.last_error: str | None = None
        self._wakeup = store.commits.outbox_wakeup()
        self._loop = BackgroundLoop("external-replicator", self._run)
        self._pending_sql = _pending_sql(store)

    # -- admission and status ------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Changes not in the Admin Service, never fewer than there are: the
        last count, the writes running now, and those committed above the
        last revision the count saw."""
        return self._counted + self._running + len(self._uncounted)

    @contextlib.contextmanager
    def admit(self) -> Iterator[WriteTicket]:
        """Held around every write: refuses it while the backlog is full."""
        if self.backlog >= self.max_backlog:
            raise ExternalBacklogFull(
                f"{self.backlog} accepted changes are waiting for the Admin Service "
                f"(EXTERNAL_DB_MAX_BACKLOG={self.max_backlog}); try again later",
                headers={"Retry-After": "5"},
            )
        ticket = WriteTicket()
        self._running += 1
        try:
            yield ticket
        finally:
            self._running -= 1
            if ticket.revision > self._counted_head:
                self._uncounted.append(ticket.revision)

    def status(self) -> SyncStatus:
        oldest = None
        if self.oldest_unsynced_at is not None:
            oldest = round(max(0.0, (utc_now() - self.oldest_unsynced_at).total_seconds()), 3)
        return SyncStatus(
            backlog=self.backlog,
            oldest_unsynced_seconds=oldest,
            full=self.backlog >= self.max_backlog,
            last_error=self.last_error,
        )

    # -- the loop ----------------------------------------------------------------

    async def start(self) -> None:
        await self.store.db.write(_ensure_cursor_row)
        await self.measure()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        with contextlib.suppress(Exception):  # the database may be gone already
            await self.store.db.write(lambda tx: _release(tx, self.holder))
        await self.admin.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                more = await self._step()
                failures = 0
                self.last_error = None
            except Exception as exc:  # the Admin Service or the journal's database failed
                failures += 1
                # A refusal will not pass by itself: it is an error, tried again slowly.
                refused = isinstance(exc, AdminServiceRejected)
                self._failed(exc, "error" if refused else "warning")
                pause = REJECTED_PAUSE if refused else UNAVAILABLE_PAUSE
                await asyncio.sleep(_pause(pause, failures))
                continue
            finally:
                self.metrics.circuit_open.set(1 if self.admin.breaker.is_open else 0)
            if not more:
                await self._wakeup.wait(self.poll_seconds)

    def _failed(self, exc: Exception, level: str) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        getattr(log, level)("external.sync_failed", error=self.last_error, backlog=self.backlog)

    async def _step(self) -> bool:
        """Write one batch if there is one and this process holds the lease;
        True when more may be waiting right now."""
        await self.measure()
        if not self.backlog:
            return False
        cursor = await self.store.db.write(
            lambda tx: claim_cursor(tx, "external_sync", self.holder, LEASE_SECONDS)
        )
        if cursor is None:
            return False  # another process drains the journal
        if self.admin.breaker.is_open:
            await self.admin.health()  # one probe, not a batch of refused calls
        rows = await self.store.db.read(lambda tx: tx.fetch(self._pending_sql, cursor, BATCH))
        if not rows:
            return False
        records = [_record(row) for row in rows]
        await self._while_holding(self._replicate(records))
        last = records[-1].revision
        moved = await self.store.db.write(lambda tx: _advance(tx, self.holder, last))
        if not moved:
            return False  # the lease lapsed meanwhile: the next holder re-drives
        return len(records) == BATCH

    async def _while_holding(self, work: Any) -> None:
        """Run the batch while renewing the lease; give up (the next holder
        re-drives) if the lease cannot be renewed."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=RENEW_SECONDS)
                if done:
                    task.result()
                    return
                renewed = await self.store.db.write(
                    lambda tx: claim_cursor(tx, "external_sync", self.holder, LEASE_SECONDS)
                )
                if renewed is None:
                    raise LeaseLost("another process took the replication lease")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _replicate(self, records: list[Record]) -> None:
        by_entity: dict[str, list[Record]] = defaultdict(list)
        for record in records:
            by_entity[record.state_id].append(record)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one_entity(changes: list[Record]) -> None:
            async with gate:
                await self._replicate_entity(changes)

        try:
            async with asyncio.TaskGroup() as group:
                for changes in by_entity.values():
                    group.create_task(one_entity(changes))
        except ExceptionGroup as failed:
            raise _telling(failed) from None

    async def _replicate_entity(self, changes: list[Record]) -> None:
        created_at: str | None = None
        for record in changes:
            await self.admin.create(self.history_collection, record.history_document())
            if record.event == EventType.CREATED.value:
                created_at = record.changed_at
        latest = changes[-1]
        if latest.new_status is None:
            await self.admin.delete(self.states_collection, latest.state_id)
            return
        document = latest.state_document(created_at or latest.created_at or latest.changed_at)
        if created_at is None:
            if await self.admin.update(self.states_collection, latest.state_id, document):
                return
            await self.admin.create(self.states_collection, document)
        elif await self.admin.create(self.states_collection, document) is None:
            await self.admin.update(self.states_collection, latest.state_id, document)

    async def measure(self) -> None:
        """Read how far the Admin Service is behind the journal."""
        counted, head, oldest = await self.store.db.read(_measure)
        self._counted, self._counted_head = counted, head
        self._uncounted = [revision for revision in self._uncounted if revision > head]
        self.oldest_unsynced_at = None if oldest is None else self.store.dialect.read_time(oldest)
        self.metrics.backlog.set(self.backlog)
        status = self.status()
        self.metrics.oldest_unsynced.set(status.oldest_unsynced_seconds or 0)


class LeaseLost(Exception):
    pass


def _telling(group: ExceptionGroup[Exception]) -> Exception:
    """The failure of a batch that says most: a refusal over an outage."""
    leaves: list[Exception] = []
    pending: list[Exception] = [group]
    while pending:
        current = pending.pop()
        if isinstance(current, ExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return next((e for e in leaves if isinstance(e, AdminServiceRejected)), leaves[0])


def _pause(bounds: tuple[float, float], failures: int) -> float:
    first, longest = bounds
    return float(min(longest, first * 2 ** min(failures - 1, 10)))


def _pending_sql(store: SqlStateStore) -> str:
    dialect = store.dialect
    return (
        "SELECT h.revision, h.entity_type, h.entity_id, h.version, h.event, "
        "h.previous_status, h.new_status, "
        f"{dialect.json_text('h.metadata')} AS metadata, h.reason, h.actor, "
        f"{dialect.api_time('h.changed_at')} AS changed_at, "
        f"{dialect.api_time('s.created_at')} AS created_at "
        "FROM state_history h LEFT JOIN states s "
        "ON s.entity_type = h.entity_type AND s.entity_id = h.entity_id "
        "WHERE h.revision > $1 ORDER BY h.revision LIMIT $2"
    )


def _record(row: Row) -> Record:
    return Record(
        revision=int(row["revision"]),
        entity=row["entity_type"],
        entity_id=row["entity_id"],
        version=int(row["version"]),
        event=row["event"],
        previous_status=row["previous_status"],
        new_status=row["new_status"],
        metadata=orjson.loads(row["metadata"]),
        reason=row["reason"],
        actor=row["actor"],
        changed_at=row["changed_at"],
        created_at=row["created_at"],
    )


async def _ensure_cursor_row(tx: Tx) -> None:
    await tx.execute(
        "INSERT INTO external_sync (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
    )


async def _advance(tx: Tx, holder: str, revision: int) -> bool:
    moved = await tx.execute(
        "UPDATE external_sync SET revision = $2 WHERE id = 1 AND holder = $1 AND revision < $2",
        holder,
        revision,
    )
    return moved > 0


async def _release(tx: Tx, holder: str) -> None:
    await tx.execute(
        "UPDATE external_sync SET holder = NULL, held_until = NULL WHERE id = 1 AND holder = $1",
        holder,
    )


async def _measure(tx: Tx) -> tuple[int, int, object]:
    """How many history records are after the cursor and the newest of them
    (one statement: one snapshot), and when the oldest was written."""
    cursor = int(await tx.fetchval("SELECT revision FROM external_sync WHERE id = 1") or 0)
    row = await tx.fetchrow(
        "SELECT count(*), max(revision) FROM state_history WHERE revision > $1", cursor
    )
    assert row is not None
    oldest = await tx.fetchval(
        "SELECT changed_at FROM state_history WHERE revision > $1 ORDER BY revision LIMIT 1",
        cursor,
    )
    return int(row[0]), int(row[1] or cursor), oldest
