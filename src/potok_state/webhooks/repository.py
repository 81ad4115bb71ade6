"""SQL for webhooks: subscriptions, the dispatch of outbox events into
deliveries, claiming due deliveries and recording attempts.

Claims are leases: a claimed delivery carries `locked_until`; if its worker dies
the lease runs out and another worker (or the restarted one) sends it again, so
delivery is at-least-once. On PostgreSQL, claims use FOR UPDATE SKIP LOCKED so
many workers share the queue; on SQLite the writer's lock makes each claim
exclusive. Claims and attempt records are taken in batches: one transaction
leases many deliveries, and one records every attempt that finished meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from potok_state.changes.model import EventRecord
from potok_state.changes.selection import event_selected
from potok_state.clock import utc_now
from potok_state.storage.commits import DELIVERIES_CHANNEL
from potok_state.storage.database import Row, Tx
from potok_state.storage.dialect import Dialect
from potok_state.storage.rows import OUTBOX_COLUMNS, event_record
from potok_state.storage.sql import SqlStateStore

PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
DISPATCH_BATCH = 500
# The queue's planner statistics are refreshed once this many deliveries were
# queued since the last refresh, at most every STATISTICS_EVERY seconds: a queue
# that grew by thousands in seconds is otherwise planned as if it were empty
# (a claim then sorts the whole backlog instead of walking the due index).
STATISTICS_AFTER_ROWS = 1000
STATISTICS_EVERY = 30.0
LAST_DELIVERY_RESOLUTION = timedelta(seconds=1)

SUBSCRIPTION_COLUMNS = (
    "id, url, events, entity_types, secret, description, active, consecutive_failures, "
    "disabled_reason, last_delivery_at, last_error, after_revision, created_at, updated_at"
)
DELIVERY_COLUMNS = (
    "id, subscription_id, revision, event_id, event, status, attempts, attempt_limit, "
    "next_attempt_at, last_status_code, last_error, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    id: str
    url: str
    events: list[str]
    entity_types: list[str] | None
    secret: str
    description: str | None
    active: bool
    consecutive_failures: int
    disabled_reason: str | None
    last_delivery_at: datetime | None
    last_error: str | None
    after_revision: int
    created_at: datetime
    updated_at: datetime

    def matches(self, event: str, entity: str | None) -> bool:
        if entity is not None and self.entity_types is not None and entity not in self.entity_types:
            return False
        return event_selected(self.events, event)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    succeeded: bool


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    subscription_id: str
    revision: int
    event_id: str
    event: str
    status: str
    attempts: int
    attempt_limit: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    attempt_log: list[AttemptRow]


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    id: int
    subscription_id: str
    url: str
    secret: str
    attempt: int
    attempt_limit: int
    event: EventRecord


@dataclass(frozen=True, slots=True)
class Dispatched:
    events: int
    """Outbox events read (DISPATCH_BATCH: there may be more)."""
    deliveries: int
    subscribed: bool
    """Some subscription is active."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivery_id: int
    subscription_id: str
    attempt: int
    attempt_limit: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    succeeded: bool
    gone: bool
    retry_at: datetime


def _json_list(value: object) -> list[str] | None:
    """A JSON array column; SQL NULL and JSON null (older rows) both mean None."""
    if value is None:
        return None
    parsed = orjson.loads(value) if isinstance(value, str | bytes) else value
    if parsed is None:
        return None
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


def _subscription(dialect: Dialect, row: Row) -> SubscriptionRow:
    last_delivery_at = row["last_delivery_at"]
    return SubscriptionRow(
        id=row["id"],
        url=row["url"],
        events=_json_list(row["events"]) or [],
        entity_types=_json_list(row["entity_types"]),
        secret=row["secret"],
        description=row["description"],
        active=dialect.read_bool(row["active"]),
        consecutive_failures=row["consecutive_failures"],
        disabled_reason=row["disabled_reason"],
        last_delivery_at=dialect.read_time(last_delivery_at) if last_delivery_at else None,
        last_error=row["last_error"],
        after_revision=row["after_revision"],
        created_at=dialect.read_time(row["created_at"]),
        updated_at=dialect.read_time(row["updated_at"]),
    )


def _ordering_key(subscription_id: str, event: EventRecord) -> str:
    if event.entity is None:
        return f"{subscription_id}/event:{event.event_id}"
    return f"{subscription_id}/{event.entity}:{event.entity_id}"


# Columns a subscription update may set, each with how its value is stored.
_UPDATABLE = (
    "url",
    "events",
    "entity_types",
    "description",
    "active",
    "consecutive_failures",
    "disabled_reason",
)


def fair_share(subscriptions: int, concurrency: int, per_subscription: int) -> int:
    """Slots one of `subscriptions` with work may hold: all it may have alone,
    otherwise an equal part of the worker with one part kept free."""
    if subscriptions <= 1:
        return per_subscription
    return min(per_subscription, max(1, concurrency // (subscriptions + 1)))


class WebhookRepository:
    def __init__(self, store: SqlStateStore) -> None:
        self.store = store
        self.db = store.db
        self.dialect = store.dialect
        # Set when deliveries become due (dispatched, retried, replayed) in this
        # process; other processes hear NOTIFY on DELIVERIES_CHANNEL.
        self.deliveries_ready = store.commits.deliveries_ready
        self._queued_since_statistics = 0
        self._statistics_at = 0.0

    async def _announce_deliveries(self, tx: Tx) -> None:
        if tx.dialect.name == "postgresql":
            await tx.execute(f"SELECT pg_notify('{DELIVERIES_CHANNEL}', '')")

    # -- subscriptions ------------------------------------------------------------

    async def create_subscription(self, values: dict[str, object]) -> SubscriptionRow:
        dialect = self.dialect
        now = dialect.time(utc_now())

        async def work(tx: Tx) -> Row:
            head = await tx.fetchval("SELECT value FROM revision_counter WHERE id = 1")
            await tx.execute(
                "INSERT INTO webhook_subscriptions (id, url, events, entity_types, secret, "
                "description, active, consecutive_failures, after_revision, created_at, "
                "updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9)",
                values["id"],
                values["url"],
                orjson.dumps(values["events"]).decode(),
                None
                if values.get("entity_types") is None
                else orjson.dumps(values["entity_types"]).decode(),
                values["secret"],
                values.get("description"),
                True,
                int(head or 0),
                now,
            )
            row = await tx.fetchrow(_SELECT_SUBSCRIPTION, values["id"])
            assert row is not None
            return row

        return _subscription(dialect, await self.db.write(work))

    async def list_subscriptions(self) -> list[SubscriptionRow]:
        rows = await self.db.read(
            lambda tx: tx.fetch(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions ORDER BY created_at, id"
            )
        )
        return [_subscription(self.dialect, row) for row in rows]

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None:
        row = await self.db.read(lambda tx: tx.fetchrow(_SELECT_SUBSCRIPTION, subscription_id))
        return None if row is None else _subscription(self.dialect, row)

    async def update_subscription(
        self, subscription_id: str, values: dict[str, object]
    ) -> SubscriptionRow | None:
        dialect = self.dialect
        assignments: list[str] = []
        args: list[object] = [subscription_id]
        for column in _UPDATABLE:
            if column not in values:
                continue
            value = values[column]
            if column in ("events", "entity_types") and value is not None:
                value = orjson.dumps(value).decode()
            args.append(value)
            assignments.append(f"{column} = ${len(args)}")
        args.append(dialect.time(utc_now()))
        assignments.append(f"updated_at = ${len(args)}")
        sql = f"UPDATE webhook_subscriptions SET {', '.join(assignments)} WHERE id = $1"

        async def work(tx: Tx) -> Row | None:
            if not await tx.execute(sql, *args):
                return None
            return await tx.fetchrow(_SELECT_SUBSCRIPTION, subscription_id)

        row = await self.db.write(work)
        return None if row is None else _subscription(dialect, row)

    async def delete_subscription(self, subscription_id: str) -> bool:
        async def work(tx: Tx) -> bool:
            await tx.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN "
                "(SELECT id FROM webhook_deliveries WHERE subscription_id = $1)",
                subscription_id,
            )
            await tx.execute(
                "DELETE FROM webhook_deliveries WHERE subscription_id = $1", subscription_id
            )
            return bool(
                await tx.execute("DELETE FROM webhook_subscriptions WHERE id = $1", subscription_id)
            )

        return await self.db.write(work)

    # -- delivery log -------------------------------------------------------------

    async def list_deliveries(
        self, subscription_id: str, *, before: int | None, limit: int
    ) -> list[DeliveryRow]:
        async def work(tx: Tx) -> list[DeliveryRow]:
            rows = await tx.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE subscription_id = $1 "
                "AND id < $2 ORDER BY id DESC LIMIT $3",
                subscription_id,
                before if before is not None else 2**62,
                limit,
            )
            return await self._with_attempts(tx, rows)

        return await self.db.read(work)

    async def get_delivery(self, delivery_id: int) -> DeliveryRow | None:
        async def work(tx: Tx) -> list[DeliveryRow]:
            rows = await tx.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1", delivery_id
            )
            return await self._with_attempts(tx, rows)

        found = await self.db.read(work)
        return found[0] if found else None

    async def _with_attempts(self, tx: Tx, rows: Sequence[Row]) -> list[DeliveryRow]:
        dialect = self.dialect
        logs: dict[int, list[AttemptRow]] = {row["id"]: [] for row in rows}
        if logs:
            attempt_rows = await tx.fetch(
                "SELECT delivery_id, attempt, started_at, duration_ms, status_code, error, "
                f"succeeded FROM webhook_attempts WHERE delivery_id {dialect.in_ints('$1')} "
                "ORDER BY delivery_id, attempt, id",
                dialect.int_list(list(logs)),
            )
            for a in attempt_rows:
                logs[a["delivery_id"]].append(
                    AttemptRow(
                        attempt=a["attempt"],
                        started_at=dialect.read_time(a["started_at"]),
                        duration_ms=a["duration_ms"],
                        status_code=a["status_code"],
                        error=a["error"],
                        succeeded=dialect.read_bool(a["succeeded"]),
                    )
                )
        return [
            DeliveryRow(
                id=row["id"],
                subscription_id=row["subscription_id"],
                revision=row["revision"],
                event_id=row["event_id"],
                event=row["event"],
                status=row["status"],
                attempts=row["attempts"],
                attempt_limit=row["attempt_limit"],
                next_attempt_at=dialect.read_time(row["next_attempt_at"]),
                last_status_code=row["last_status_code"],
                last_error=row["last_error"],
                created_at=dialect.read_time(row["created_at"]),
                updated_at=dialect.read_time(row["updated_at"]),
                attempt_log=logs[row["id"]],
            )
            for row in rows
        ]

    async def retry_delivery(self, delivery_id: int, extra_attempts: int) -> bool:
        """Put a failed delivery back in the queue with a fresh retry budget."""
        now = self.dialect.time(utc_now())

        async def work(tx: Tx) -> bool:
            changed = await tx.execute(
                "UPDATE webhook_deliveries SET status = $2, attempt_limit = attempts + $3, "
                "next_attempt_at = $4, locked_until = NULL, updated_at = $4 "
                "WHERE id = $1 AND status = $5",
                delivery_id,
                PENDING,
                extra_attempts,
                now,
                FAILED,
            )
            await self._announce_deliveries(tx)
            return bool(changed)

        retried = await self.db.write(work)
        self.deliveries_ready.notify()
        return retried

    async def replay(
        self,
        subscription: SubscriptionRow,
        *,
        from_revision: int | None,
        since: datetime | None,
        attempt_limit: int,
        max_events: int,
    ) -> tuple[int, int | None, int | None]:
        """Queue again what the subscription matched from a revision or a time."""
        dialect = self.dialect
        now = utc_now()
        conditions = ["revision >= $1"]
        args: list[object] = [from_revision or 0]
        if since is not None:
            args.append(dialect.time(since))
            conditions.append(f"created_at >= ${len(args)}")
        args.append(max_events)
        sql = (
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(conditions)} "
            f"ORDER BY revision LIMIT ${len(args)}"
        )

        async def work(tx: Tx) -> tuple[int, int | None, int | None]:
            records = [event_record(dialect, row) for row in await tx.fetch(sql, *args)]
            rows = [
                _delivery_values(dialect, subscription.id, record, attempt_limit, now)
                for record in records
                if subscription.matches(record.event, record.entity)
            ]
            if rows:
                await tx.executemany(_INSERT_DELIVERY, rows)
                await self._announce_deliveries(tx)
            first = records[0].revision if records else None
            last = records[-1].revision if records else None
            return len(rows), first, last

        replayed = await self.db.write(work)
        self.deliveries_ready.notify()
        return replayed

    # -- the worker's side ----------------------------------------------------------

    async def dispatch(self, attempt_limit: int) -> Dispatched:
        """Turn the next outbox events (at most DISPATCH_BATCH) into deliveries
        for the active subscriptions that match them."""
        dialect = self.dialect
        now = utc_now()

        async def work(tx: Tx) -> Dispatched:
            cursor = await tx.fetchval(
                "SELECT revision FROM webhook_dispatch_cursor WHERE id = 1" + dialect.for_update
            )
            active = [
                _subscription(dialect, row)
                for row in await tx.fetch(
                    f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE active"
                )
            ]
            if not active:
                # Nothing to deliver to: move the cursor to the head without
                # reading the events (a subscription made later starts there).
                await tx.execute(
                    "UPDATE webhook_dispatch_cursor SET revision = "
                    "(SELECT value FROM revision_counter WHERE id = 1) "
                    "WHERE id = 1 AND revision < (SELECT value FROM revision_counter WHERE id = 1)"
                )
                return Dispatched(0, 0, subscribed=False)
            records = [
                event_record(dialect, row)
                for row in await tx.fetch(
                    f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE revision > $1 "
                    "ORDER BY revision LIMIT $2",
                    cursor or 0,
                    DISPATCH_BATCH,
                )
            ]
            if not records:
                return Dispatched(0, 0, subscribed=True)
            rows = [
                _delivery_values(dialect, subscription.id, record, attempt_limit, now)
                for record in records
                for subscription in active
                if record.revision > subscription.after_revision
                and subscription.matches(record.event, record.entity)
            ]
            if rows:
                await tx.executemany(_INSERT_DELIVERY, rows)
                await self._announce_deliveries(tx)
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

    async def claim_due(
        self,
        *,
        limit: int,
        lease: timedelta,
        in_flight: Mapping[str, int],
        per_subscription: int,
        concurrency: int,
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries, at most one in flight per
        ordering key: a delivery waits while an older one for the same entity
        and subscription is still pending, so each subscriber sees an entity's
        events in revision order.

        Slots are shared fairly (`fair_share`): while several subscriptions have
        work, each may hold its share of the worker's `concurrency` (`in_flight`:
        what this worker already sends per subscription), one share is kept free
        for a subscription whose work arrives next, and none holds more than
        `per_subscription`; so receivers that hang hold only their own shares.
        Subscriptions at their share are left out of the candidates in SQL:
        otherwise their backlog fills the candidate window and hides the others'
        deliveries until it drains."""
        dialect = self.dialect
        now = utc_now()
        active = [sub for sub, count in in_flight.items() if count > 0]
        share = fair_share(len(active), concurrency, per_subscription)
        saturated = dialect.text_list([sub for sub in active if in_flight[sub] >= share])
        candidates = (
            "SELECT d.id, d.subscription_id FROM webhook_deliveries d WHERE d.status = 'pending' "
            "AND d.next_attempt_at <= $1 "
            "AND (d.locked_until IS NULL OR d.locked_until < $1) "
            # A subscription disabled through the API pauses its deliveries.
            "AND EXISTS (SELECT 1 FROM webhook_subscriptions s "
            "WHERE s.id = d.subscription_id AND s.active) "
            # The oldest pending delivery of its ordering key. Written as a
            # min() so the probe can only be answered from the ordering index:
            # as `NOT EXISTS (an older one)`, a table without statistics yet was
            # planned over the due index, O(n^2) (5.8 s a claim with 9,000 queued).
            "AND d.id = (SELECT min(e.id) FROM webhook_deliveries e "
            "WHERE e.ordering_key = d.ordering_key AND e.status = 'pending') "
            f"AND d.subscription_id {dialect.not_in_list('$3')} "
            "ORDER BY d.next_attempt_at, d.id LIMIT $2" + dialect.skip_locked
        )

        async def work(tx: Tx) -> Sequence[Row]:
            found = await tx.fetch(candidates, dialect.time(now), 2 * limit, saturated)
            busy = set(active) | {row["subscription_id"] for row in found}
            cap = fair_share(len(busy), concurrency, per_subscription)
            taken = dict(in_flight)
            ids: list[int] = []
            for row in found:
                subscription = row["subscription_id"]
                if taken.get(subscription, 0) < cap:
                    taken[subscription] = taken.get(subscription, 0) + 1
                    ids.append(row["id"])
                    if len(ids) == limit:
                        break
            if not ids:
                return []
            id_list = dialect.int_list(ids)
            await tx.execute(
                f"UPDATE webhook_deliveries SET locked_until = $2 WHERE id {dialect.in_ints('$1')}",
                id_list,
                dialect.time(now + lease),
            )
            return await tx.fetch(
                "SELECT d.id AS delivery_id, d.subscription_id, d.attempts, d.attempt_limit, "
                "s.url, s.secret, o.revision, o.event_id, o.event, o.entity_type, o.entity_id, "
                "o.data, o.created_at FROM webhook_deliveries d "
                "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
                "JOIN outbox o ON o.revision = d.revision "
                f"WHERE d.id {dialect.in_ints('$1')} ORDER BY d.id",
                id_list,
            )

        rows = await self.db.write(work)
        return [
            ClaimedDelivery(
                id=row["delivery_id"],
                subscription_id=row["subscription_id"],
                url=row["url"],
                secret=row["secret"],
                attempt=row["attempts"] + 1,
                attempt_limit=row["attempt_limit"],
                event=event_record(dialect, row),
            )
            for row in rows
        ]

    async def record_attempts(
        self, results: Sequence[AttemptResult], *, max_consecutive_failures: int
    ) -> list[str]:
        """Store finished attempts and their consequences in one transaction;
        returns each delivery's new status, in order."""
        dialect = self.dialect
        now = utc_now()

        async def work(tx: Tx) -> list[str]:
            await tx.executemany(
                "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, "
                "status_code, error, succeeded) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    (
                        r.delivery_id,
                        r.attempt,
                        dialect.time(r.started_at),
                        r.duration_ms,
                        r.status_code,
                        r.error,
                        r.succeeded,
                    )
                    for r in results
                ],
            )
            statuses: list[str] = []
            if all(r.succeeded for r in results):
                await self._record_successes(tx, results, now)
                return [SUCCEEDED] * len(results)
            # A failure in the batch: in order, one by one, so the failure
            # count of each subscription sees successes and failures as they
            # happened.
            for result in results:
                if result.succeeded:
                    await self._record_successes(tx, [result], now)
                    statuses.append(SUCCEEDED)
                else:
                    statuses.append(
                        await self._record_failure(tx, result, now, max_consecutive_failures)
                    )
            return statuses

        return await self.db.write(work)

    async def _record_successes(
        self, tx: Tx, successes: Sequence[AttemptResult], now: datetime
    ) -> None:
        dialect = self.dialect
        stamp = dialect.time(now)
        await tx.executemany(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, locked_until = NULL, "
            "last_status_code = $4, last_error = NULL, updated_at = $5 WHERE id = $1",
            [(r.delivery_id, SUCCEEDED, r.attempt, r.status_code, stamp) for r in successes],
        )
        # Successes of one subscription would all queue on its row lock across
        # workers; the row is only written when it says something new (a
        # failure streak ended, or a stale timestamp). Sorted, so two workers
        # lock subscriptions in the same order.
        stale = dialect.time(now - LAST_DELIVERY_RESOLUTION)
        await tx.executemany(
            "UPDATE webhook_subscriptions SET consecutive_failures = 0, last_delivery_at = $2, "
            "last_error = NULL WHERE id = $1 AND (consecutive_failures <> 0 "
            "OR last_error IS NOT NULL OR last_delivery_at IS NULL OR last_delivery_at < $3)",
            [(sub, stamp, stale) for sub in sorted({r.subscription_id for r in successes})],
        )

    async def _record_failure(
        self, tx: Tx, result: AttemptResult, now: datetime, max_consecutive_failures: int
    ) -> str:
        dialect = self.dialect
        stamp = dialect.time(now)
        counted = await tx.fetchrow(
            "UPDATE webhook_subscriptions SET consecutive_failures = consecutive_failures + 1, "
            "last_delivery_at = $2, last_error = $3 WHERE id = $1 "
            "RETURNING consecutive_failures, active",
            result.subscription_id,
            stamp,
            result.error,
        )
        active = counted is not None and dialect.read_bool(counted["active"])
        disable_reason = None
        if result.gone:
            disable_reason = "the receiver answered 410 Gone"
        elif (
            active
            and counted is not None
            and counted["consecutive_failures"] >= max_consecutive_failures
        ):
            disable_reason = f"{counted['consecutive_failures']} failed attempts in a row"
        exhausted = result.attempt >= result.attempt_limit
        # An attempt that was in flight when its subscription was disabled (or
        # deleted) is not retried.
        status = FAILED if exhausted or disable_reason or not active else PENDING
        await tx.execute(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, "
            "locked_until = NULL, last_status_code = $5, last_error = $6, updated_at = $7 "
            "WHERE id = $1",
            result.delivery_id,
            status,
            result.attempt,
            dialect.time(result.retry_at) if status == PENDING else stamp,
            result.status_code,
            result.error,
            stamp,
        )
        if disable_reason is not None:
            await tx.execute(
                "UPDATE webhook_subscriptions SET active = $2, disabled_reason = $3, "
                "updated_at = $4 WHERE id = $1",
                result.subscription_id,
                False,
                disable_reason,
                stamp,
            )
            await tx.execute(
                "UPDATE webhook_deliveries SET status = $2, locked_until = NULL, last_error = $3, "
                "updated_at = $4 WHERE subscription_id = $1 AND status = $5",
                result.subscription_id,
                FAILED,
                f"subscription disabled: {disable_reason}",
                stamp,
                PENDING,
            )
        return status


_SELECT_SUBSCRIPTION = f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = $1"
_INSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries (subscription_id, revision, event_id, event, ordering_key, "
    "status, attempts, attempt_limit, next_attempt_at, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $8, $8)"
)


def _delivery_values(
    dialect: Dialect, subscription_id: str, record: EventRecord, attempt_limit: int, now: datetime
) -> tuple[object, ...]:
    return (
        subscription_id,
        record.revision,
        record.event_id,
        record.event,
        _ordering_key(subscription_id, record),
        PENDING,
        attempt_limit,
        dialect.time(now),
    )
