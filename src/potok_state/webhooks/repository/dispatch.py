"""Dispatch: outbox events become deliveries, one per matching subscription,
in the transaction that moves the dispatch cursor, so each event is
dispatched exactly once however many workers run (docs/guarantees.md,
"Webhook delivery"). Replays and retries queue deliveries the same way
(`queue_deliveries`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from potok_state.clock import utc_now
from potok_state.storage.commits import DELIVERIES_CHANNEL
from potok_state.storage.database import Row, Tx
from potok_state.storage.dialect import Dialect
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.repository.rows import (
    PENDING,
    SKIPPED,
    SUBSCRIPTION_COLUMNS,
    read_subscription,
)

DISPATCH_BATCH = 500
# The queue's planner statistics are refreshed once this many deliveries were
# queued since the last refresh, at most every STATISTICS_EVERY seconds: a queue
# that grew by thousands in seconds is otherwise planned as if it were empty
# (a claim then sorts the whole backlog instead of walking the due index).
STATISTICS_AFTER_ROWS = 1000
STATISTICS_EVERY = 30.0
_INSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries (subscription_id, revision, event_id, event, ordering_key, "
    "status, attempts, attempt_limit, next_attempt_at, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $8, $8)"
)
_INSERT_DELIVERIES_POSTGRES = (
    "INSERT INTO webhook_deliveries (subscription_id, revision, event_id, event, ordering_key, "
    "status, attempts, attempt_limit, next_attempt_at, created_at, updated_at) "
    "SELECT s, r, i, e, k, st, 0, l, t, t, t FROM unnest($1::text[], $2::bigint[], "
    "$3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::timestamptz[]) "
    "AS q(s, r, i, e, k, st, l, t)"
)


@dataclass(frozen=True, slots=True)
class Dispatched:
    events: int
    """Outbox events read (DISPATCH_BATCH: there may be more)."""
    deliveries: int
    subscribed: bool
    """Some subscription exists (active or not: a disabled one gets skipped deliveries)."""


# The outbox columns a delivery is queued from; not the payload nor the time
# (the claim reads the event whole when it sends it).
OUTBOX_KEY_COLUMNS = "revision, event_id, event, entity_type, entity_id"


@dataclass(frozen=True, slots=True)
class OutboxKey:
    """What queueing a delivery needs of its event."""

    revision: int
    event_id: str
    event: str
    entity: str | None
    entity_id: str | None

    @classmethod
    def of(cls, row: Row) -> OutboxKey:
        """From a row of OUTBOX_KEY_COLUMNS."""
        return cls(
            row["revision"], row["event_id"], row["event"], row["entity_type"], row["entity_id"]
        )


def delivery_values(
    dialect: Dialect,
    subscription_id: str,
    record: OutboxKey,
    attempt_limit: int,
    now: datetime,
    status: str,
) -> tuple[object, ...]:
    """A delivery row to queue (`queue_deliveries`)."""
    return (
        subscription_id,
        record.revision,
        record.event_id,
        record.event,
        _ordering_key(subscription_id, record),
        status,
        attempt_limit,
        dialect.time(now),
    )


async def queue_deliveries(tx: Tx, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert deliveries (`delivery_values`) and tell the workers of other
    processes; this process's are told after the commit (`deliveries_ready`)."""
    if not rows:
        return
    if tx.dialect.name == "postgresql":
        # One statement for the batch: one execution instead of one per row.
        await tx.execute(
            _INSERT_DELIVERIES_POSTGRES, *(list(column) for column in zip(*rows, strict=True))
        )
    else:
        await tx.executemany(_INSERT_DELIVERY, rows)
    await announce_deliveries(tx)


async def announce_deliveries(tx: Tx) -> None:
    if tx.dialect.name == "postgresql":
        await tx.execute(f"SELECT pg_notify('{DELIVERIES_CHANNEL}', '')")


def _ordering_key(subscription_id: str, event: OutboxKey) -> str:
    """Deliveries of one key go one at a time, in order (claims.py)."""
    if event.entity is None:
        return f"{subscription_id}/event:{event.event_id}"
    if event.entity_id is None:  # an event of the type itself (`machine.updated`)
        return f"{subscription_id}/{event.entity}"
    return f"{subscription_id}/{event.entity}:{event.entity_id}"


class OutboxDispatch:
    def __init__(self, store: SqlStateStore) -> None:
        self.db = store.db
        self.dialect = store.dialect
        self._queued_since_statistics = 0
        self._statistics_at = 0.0

    async def dispatch(self, attempt_limit: int) -> Dispatched:
        """Turn the next outbox events (at most DISPATCH_BATCH) into deliveries
        for the subscriptions that match them: pending for active ones, skipped
        for disabled ones (so `replay?missing=true` can send them later)."""
        dialect = self.dialect
        now = utc_now()

        async def work(tx: Tx) -> Dispatched:
            cursor = await tx.fetchval(
                "SELECT revision FROM webhook_dispatch_cursor WHERE id = 1" + dialect.for_update
            )
            subscriptions = [
                read_subscription(dialect, row, None)
                for row in await tx.fetch(
                    f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions"
                )
            ]
            if not subscriptions:
                # Nothing to deliver to: move the cursor to the head without
                # reading the events (a subscription made later starts there).
                await tx.execute(
                    "UPDATE webhook_dispatch_cursor SET revision = "
                    "(SELECT value FROM revision_counter WHERE id = 1) "
                    "WHERE id = 1 AND revision < (SELECT value FROM revision_counter WHERE id = 1)"
                )
                return Dispatched(0, 0, subscribed=False)
            records = [
                OutboxKey.of(row)
                for row in await tx.fetch(
                    f"SELECT {OUTBOX_KEY_COLUMNS} FROM outbox WHERE revision > $1 "
                    "ORDER BY revision LIMIT $2",
                    cursor or 0,
                    DISPATCH_BATCH,
                )
            ]
            if not records:
                return Dispatched(0, 0, subscribed=True)
            rows = [
                delivery_values(
                    dialect,
                    subscription.id,
                    record,
                    subscription.attempt_limit(attempt_limit),
                    now,
                    PENDING if subscription.active else SKIPPED,
                )
                for record in records
                for subscription in subscriptions
                if record.revision > subscription.after_revision
                and subscription.matches(record.event, record.entity)
            ]
            if rows:
                await queue_deliveries(tx, rows)
            await tx.execute(
                "UPDATE webhook_dispatch_cursor SET revision = $1 WHERE id = 1",
                records[-1].revision,
            )
            return Dispatched(len(records), len(rows), subscribed=True)

        dispatched = await self.db.write(work)
        await self._keep_statistics(dispatched.deliveries)
        return dispatched

    async def _keep_statistics(self, queued: int) -> None:
        refresh = self.dialect.refresh_statistics("webhook_deliveries")
        if refresh is None:
            return
        self._queued_since_statistics += queued
        now = time.monotonic()
        if (
            self._queued_since_statistics >= STATISTICS_AFTER_ROWS
            and now - self._statistics_at >= STATISTICS_EVERY
        ):
            self._queued_since_statistics = 0
            self._statistics_at = now
            await self.db.read(lambda tx: tx.execute(refresh))

    async def outbox_lag(self) -> int:
        async def work(tx: Tx) -> int:
            head = await tx.fetchval("SELECT value FROM revision_counter WHERE id = 1")
            cursor = await tx.fetchval("SELECT revision FROM webhook_dispatch_cursor WHERE id = 1")
            return max(0, int(head or 0) - int(cursor or 0))

        return await self.db.read(work)
