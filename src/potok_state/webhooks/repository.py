"""SQL for webhooks: subscriptions, the dispatch of outbox events into
deliveries, claiming due deliveries and recording attempts.

Claims are leases: a claimed delivery carries `locked_until`; if its worker dies
the lease runs out and another worker (or the restarted one) sends it again, so
delivery is at-least-once. On PostgreSQL, claims use FOR UPDATE SKIP LOCKED so
many workers share the queue; on SQLite one process owns the queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, exists, func, insert, select, update
from sqlalchemy.engine import Connection

from potok_state.changes.model import (
    EventRecord,
)
from potok_state.clock import as_utc, utc_now
from potok_state.storage.sql import SqlStateStore, event_from_row
from potok_state.storage.tables import (
    outbox,
    revision_counter,
    webhook_attempts,
    webhook_deliveries,
    webhook_dispatch_cursor,
    webhook_subscriptions,
)
from potok_state.wakeup import Wakeup

DELIVERIES_CHANNEL = "potok_deliveries"
PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
DISPATCH_BATCH = 500
LAST_DELIVERY_RESOLUTION = timedelta(seconds=1)

subs = webhook_subscriptions
deliveries = webhook_deliveries
attempts = webhook_attempts


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
        family = event.split(".", 1)[0] + ".*"
        return any(pattern in ("*", family, event) for pattern in self.events)


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


def _subscription(row: Row[Any]) -> SubscriptionRow:
    return SubscriptionRow(
        id=row.id,
        url=row.url,
        events=list(row.events),
        entity_types=None if row.entity_types is None else list(row.entity_types),
        secret=row.secret,
        description=row.description,
        active=row.active,
        consecutive_failures=row.consecutive_failures,
        disabled_reason=row.disabled_reason,
        last_delivery_at=as_utc(row.last_delivery_at) if row.last_delivery_at else None,
        last_error=row.last_error,
        after_revision=row.after_revision,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def _ordering_key(subscription_id: str, record: Row[Any]) -> str:
    if record.entity_type is None:
        return f"{subscription_id}/event:{record.event_id}"
    return f"{subscription_id}/{record.entity_type}:{record.entity_id}"


class WebhookRepository:
    def __init__(self, store: SqlStateStore) -> None:
        self.store = store
        self.is_sqlite = store.is_sqlite
        # Set when deliveries become due (dispatched, retried, replayed) in this
        # process; other processes hear NOTIFY on DELIVERIES_CHANNEL.
        self.deliveries_ready = Wakeup()

    def _announce_deliveries(self, conn: Connection) -> None:
        if not self.is_sqlite:
            conn.execute(select(func.pg_notify(DELIVERIES_CHANNEL, "")))

    # -- subscriptions ------------------------------------------------------------

    async def create_subscription(self, values: dict[str, object]) -> SubscriptionRow:
        now = utc_now()

        def work(conn: Connection) -> Row[Any]:
            head = conn.scalar(select(revision_counter.c.value).where(revision_counter.c.id == 1))
            row = {
                **values,
                "active": True,
                "consecutive_failures": 0,
                "after_revision": head or 0,
                "created_at": now,
                "updated_at": now,
            }
            conn.execute(insert(subs).values(row))
            return conn.execute(select(subs).where(subs.c.id == values["id"])).one()

        return _subscription(await self.store.write(work))

    async def list_subscriptions(self) -> list[SubscriptionRow]:
        statement = select(subs).order_by(subs.c.created_at, subs.c.id)
        rows = await self.store.read(lambda conn: conn.execute(statement).all())
        return [_subscription(row) for row in rows]

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None:
        statement = select(subs).where(subs.c.id == subscription_id)
        row = await self.store.read(lambda conn: conn.execute(statement).first())
        return None if row is None else _subscription(row)

    async def update_subscription(
        self, subscription_id: str, values: dict[str, object]
    ) -> SubscriptionRow | None:
        def work(conn: Connection) -> Row[Any] | None:
            result = conn.execute(
                update(subs)
                .where(subs.c.id == subscription_id)
                .values(**values, updated_at=utc_now())
            )
            if result.rowcount == 0:
                return None
            return conn.execute(select(subs).where(subs.c.id == subscription_id)).one()

        row = await self.store.write(work)
        return None if row is None else _subscription(row)

    async def delete_subscription(self, subscription_id: str) -> bool:
        def work(conn: Connection) -> bool:
            owned = select(deliveries.c.id).where(deliveries.c.subscription_id == subscription_id)
            conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(owned)))
            conn.execute(delete(deliveries).where(deliveries.c.subscription_id == subscription_id))
            return bool(conn.execute(delete(subs).where(subs.c.id == subscription_id)).rowcount)

        return await self.store.write(work)

    # -- delivery log -------------------------------------------------------------

    async def list_deliveries(
        self, subscription_id: str, *, before: int | None, limit: int
    ) -> list[DeliveryRow]:
        query = select(deliveries).where(deliveries.c.subscription_id == subscription_id)
        if before is not None:
            query = query.where(deliveries.c.id < before)
        query = query.order_by(deliveries.c.id.desc()).limit(limit)
        return await self.store.read(
            lambda conn: self._with_attempts(conn, conn.execute(query).all())
        )

    async def get_delivery(self, delivery_id: int) -> DeliveryRow | None:
        statement = select(deliveries).where(deliveries.c.id == delivery_id)
        found = await self.store.read(
            lambda conn: self._with_attempts(conn, conn.execute(statement).all())
        )
        return found[0] if found else None

    def _with_attempts(self, conn: Connection, rows: Sequence[Row[Any]]) -> list[DeliveryRow]:
        logs: dict[int, list[AttemptRow]] = {row.id: [] for row in rows}
        if logs:
            attempt_rows = conn.execute(
                select(attempts)
                .where(attempts.c.delivery_id.in_(list(logs)))
                .order_by(attempts.c.delivery_id, attempts.c.attempt, attempts.c.id)
            )
            for a in attempt_rows:
                logs[a.delivery_id].append(
                    AttemptRow(
                        attempt=a.attempt,
                        started_at=as_utc(a.started_at),
                        duration_ms=a.duration_ms,
                        status_code=a.status_code,
                        error=a.error,
                        succeeded=a.succeeded,
                    )
                )
        return [
            DeliveryRow(
                id=row.id,
                subscription_id=row.subscription_id,
                revision=row.revision,
                event_id=row.event_id,
                event=row.event,
                status=row.status,
                attempts=row.attempts,
                attempt_limit=row.attempt_limit,
                next_attempt_at=as_utc(row.next_attempt_at),
                last_status_code=row.last_status_code,
                last_error=row.last_error,
                created_at=as_utc(row.created_at),
                updated_at=as_utc(row.updated_at),
                attempt_log=logs[row.id],
            )
            for row in rows
        ]

    async def retry_delivery(self, delivery_id: int, extra_attempts: int) -> bool:
        """Put a failed delivery back in the queue with a fresh retry budget."""
        now = utc_now()

        def work(conn: Connection) -> bool:
            result = conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.status == FAILED)
                .values(
                    status=PENDING,
                    attempt_limit=deliveries.c.attempts + extra_attempts,
                    next_attempt_at=now,
                    locked_until=None,
                    updated_at=now,
                )
            )
            self._announce_deliveries(conn)
            return bool(result.rowcount)

        retried = await self.store.write(work)
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
        query = select(outbox).order_by(outbox.c.revision).limit(max_events)
        if from_revision is not None:
            query = query.where(outbox.c.revision >= from_revision)
        if since is not None:
            query = query.where(outbox.c.created_at >= since)
        now = utc_now()

        def work(conn: Connection) -> tuple[int, int | None, int | None]:
            records = conn.execute(query).all()
            rows = [
                _delivery_values(subscription.id, record, attempt_limit, now)
                for record in records
                if subscription.matches(record.event, record.entity_type)
            ]
            if rows:
                conn.execute(insert(deliveries), rows)
                self._announce_deliveries(conn)
            first = records[0].revision if records else None
            last = records[-1].revision if records else None
            return len(rows), first, last

        replayed = await self.store.write(work)
        self.deliveries_ready.notify()
        return replayed

    # -- the worker's side ----------------------------------------------------------

    async def dispatch(self, attempt_limit: int) -> tuple[int, int]:
        """Turn the next outbox events (at most DISPATCH_BATCH) into deliveries
        for the active subscriptions that match them; returns how many events
        were read and how many deliveries were created."""
        now = utc_now()

        def work(conn: Connection) -> tuple[int, int]:
            cursor_query = select(webhook_dispatch_cursor.c.revision).where(
                webhook_dispatch_cursor.c.id == 1
            )
            if not self.is_sqlite:
                cursor_query = cursor_query.with_for_update()
            cursor = conn.scalar(cursor_query) or 0
            records = conn.execute(
                select(outbox)
                .where(outbox.c.revision > cursor)
                .order_by(outbox.c.revision)
                .limit(DISPATCH_BATCH)
            ).all()
            if not records:
                return 0, 0
            active = [
                _subscription(row)
                for row in conn.execute(select(subs).where(subs.c.active.is_(True))).all()
            ]
            rows = [
                _delivery_values(subscription.id, record, attempt_limit, now)
                for record in records
                for subscription in active
                if record.revision > subscription.after_revision
                and subscription.matches(record.event, record.entity_type)
            ]
            if rows:
                conn.execute(insert(deliveries), rows)
                self._announce_deliveries(conn)
            conn.execute(
                update(webhook_dispatch_cursor)
                .where(webhook_dispatch_cursor.c.id == 1)
                .values(revision=records[-1].revision)
            )
            return len(records), len(rows)

        return await self.store.write(work)

    async def outbox_lag(self) -> int:
        def work(conn: Connection) -> int:
            head = conn.scalar(select(revision_counter.c.value))
            cursor = conn.scalar(select(webhook_dispatch_cursor.c.revision))
            return max(0, (head or 0) - (cursor or 0))

        return await self.store.read(work)

    async def claim_due(
        self, *, limit: int, lease: timedelta, skip_subscriptions: Sequence[str]
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries, at most one in flight per
        subscription and ordering key: a delivery waits while an older one for
        the same entity is still pending, so each subscriber sees an entity's
        events in revision order."""
        now = utc_now()
        earlier = deliveries.alias("earlier")
        candidates = (
            select(deliveries.c.id)
            .where(
                deliveries.c.status == PENDING,
                deliveries.c.next_attempt_at <= now,
                # A subscription disabled through the API pauses its deliveries.
                exists().where(subs.c.id == deliveries.c.subscription_id, subs.c.active.is_(True)),
                (deliveries.c.locked_until.is_(None)) | (deliveries.c.locked_until < now),
                ~exists().where(
                    earlier.c.ordering_key == deliveries.c.ordering_key,
                    earlier.c.status == PENDING,
                    earlier.c.id < deliveries.c.id,
                ),
            )
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
        )
        if skip_subscriptions:
            candidates = candidates.where(deliveries.c.subscription_id.not_in(skip_subscriptions))
        if not self.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True, of=deliveries)

        def work(conn: Connection) -> Sequence[Row[Any]]:
            ids = list(conn.scalars(candidates).all())
            if not ids:
                return []
            conn.execute(
                update(deliveries).where(deliveries.c.id.in_(ids)).values(locked_until=now + lease)
            )
            return conn.execute(
                select(
                    deliveries.c.id,
                    deliveries.c.subscription_id,
                    deliveries.c.attempts,
                    deliveries.c.attempt_limit,
                    subs.c.url,
                    subs.c.secret,
                    outbox,
                )
                .join(subs, subs.c.id == deliveries.c.subscription_id)
                .join(outbox, outbox.c.revision == deliveries.c.revision)
                .where(deliveries.c.id.in_(ids))
                .order_by(deliveries.c.id)
            ).all()

        rows = await self.store.write(work)
        return [
            ClaimedDelivery(
                id=row.id,
                subscription_id=row.subscription_id,
                url=row.url,
                secret=row.secret,
                attempt=row.attempts + 1,
                attempt_limit=row.attempt_limit,
                event=event_from_row(row),
            )
            for row in rows
        ]

    async def record_attempt(self, result: AttemptResult, *, max_consecutive_failures: int) -> str:
        """Store one attempt and its consequences in one transaction; returns
        the delivery's new status."""
        now = utc_now()

        def work(conn: Connection) -> str:
            conn.execute(
                insert(attempts).values(
                    delivery_id=result.delivery_id,
                    attempt=result.attempt,
                    started_at=result.started_at,
                    duration_ms=result.duration_ms,
                    status_code=result.status_code,
                    error=result.error,
                    succeeded=result.succeeded,
                )
            )
            this_delivery = deliveries.c.id == result.delivery_id
            this_subscription = subs.c.id == result.subscription_id
            if result.succeeded:
                conn.execute(
                    update(deliveries)
                    .where(this_delivery)
                    .values(
                        status=SUCCEEDED,
                        attempts=result.attempt,
                        locked_until=None,
                        last_status_code=result.status_code,
                        last_error=None,
                        updated_at=now,
                    )
                )
                # Successes of one subscription would all queue on its row lock
                # across workers; the row is only written when it says
                # something new (a failure streak ended, or a stale timestamp).
                conn.execute(
                    update(subs)
                    .where(
                        this_subscription,
                        (subs.c.consecutive_failures != 0)
                        | subs.c.last_error.is_not(None)
                        | subs.c.last_delivery_at.is_(None)
                        | (subs.c.last_delivery_at < now - LAST_DELIVERY_RESOLUTION),
                    )
                    .values(consecutive_failures=0, last_delivery_at=now, last_error=None)
                )
                return SUCCEEDED

            counted = conn.execute(
                update(subs)
                .where(this_subscription)
                .values(
                    consecutive_failures=subs.c.consecutive_failures + 1,
                    last_delivery_at=now,
                    last_error=result.error,
                )
                .returning(subs.c.consecutive_failures, subs.c.active)
            ).first()
            disable_reason = None
            if result.gone:
                disable_reason = "the receiver answered 410 Gone"
            elif (
                counted is not None
                and counted.active
                and counted.consecutive_failures >= max_consecutive_failures
            ):
                disable_reason = f"{counted.consecutive_failures} failed attempts in a row"
            exhausted = result.attempt >= result.attempt_limit
            # An attempt that was in flight when its subscription was disabled
            # (or deleted) is not retried.
            retired = counted is None or not counted.active
            status = FAILED if exhausted or disable_reason or retired else PENDING
            conn.execute(
                update(deliveries)
                .where(this_delivery)
                .values(
                    status=status,
                    attempts=result.attempt,
                    next_attempt_at=result.retry_at if status == PENDING else now,
                    locked_until=None,
                    last_status_code=result.status_code,
                    last_error=result.error,
                    updated_at=now,
                )
            )
            if disable_reason is not None:
                conn.execute(
                    update(subs)
                    .where(this_subscription)
                    .values(active=False, disabled_reason=disable_reason, updated_at=now)
                )
                conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.subscription_id == result.subscription_id,
                        deliveries.c.status == PENDING,
                    )
                    .values(
                        status=FAILED,
                        locked_until=None,
                        last_error=f"subscription disabled: {disable_reason}",
                        updated_at=now,
                    )
                )
            return status

        return await self.store.write(work)


def _delivery_values(
    subscription_id: str, record: Row[Any], attempt_limit: int, now: datetime
) -> dict[str, object]:
    return {
        "subscription_id": subscription_id,
        "revision": record.revision,
        "event_id": record.event_id,
        "event": record.event,
        "ordering_key": _ordering_key(subscription_id, record),
        "status": PENDING,
        "attempts": 0,
        "attempt_limit": attempt_limit,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
