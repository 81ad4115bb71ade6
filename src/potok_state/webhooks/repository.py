"""SQL for webhooks: subscriptions, the dispatch of outbox events into
deliveries, claiming due deliveries and recording attempts.

Failed attempts are judged by webhooks/policy.py (the circuit breaker and the
disable policy) in the transaction that records them; a disabled
subscription's deliveries are `skipped` (docs/webhooks.md).

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
from potok_state.webhooks.policy import FailurePolicy, FailureStreak
from potok_state.webhooks.rates import DeliveryRates
from potok_state.webhooks.sealing import SecretSeal

PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
# Not sent: the subscription was disabled (`replay?missing=true` sends these).
SKIPPED = "skipped"
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
    "disabled_reason, last_delivery_at, last_error, after_revision, created_at, updated_at, "
    "failed_attempts, failing_since, failing_notified, circuit_open_until, circuit_probes, "
    "previous_secret, previous_secret_until, rate_limit, timeout_ms, max_attempts"
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
    failed_attempts: int = 0
    failing_since: datetime | None = None
    failing_notified: int = 0
    circuit_open_until: datetime | None = None
    circuit_probes: int = 0
    previous_secret: str | None = None
    previous_secret_until: datetime | None = None
    rate_limit: int | None = None
    timeout_ms: int | None = None
    max_attempts: int | None = None

    def attempt_limit(self, default: int) -> int:
        return self.max_attempts or default

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
    previous_secret: str | None = None
    """The secret before a rotation, while it still signs."""
    probe: bool = False
    """Sent to test an open circuit."""
    timeout_ms: int | None = None
    """The subscription's own per-attempt timeout."""


@dataclass(frozen=True, slots=True)
class Dispatched:
    events: int
    """Outbox events read (DISPATCH_BATCH: there may be more)."""
    deliveries: int
    subscribed: bool
    """Some subscription exists (active or not: a disabled one gets skipped deliveries)."""


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
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """An operational event about a subscription, published after the
    transaction that caused it commits (docs/webhooks.md)."""

    event: str
    subscription_id: str
    data: dict[str, object]


@dataclass(frozen=True, slots=True)
class Recorded:
    statuses: list[str]
    """Each attempt's delivery status, in order."""
    notices: list[Notice]
    probes_due: list[datetime]
    """When circuits opened or re-armed by these attempts allow their next probe."""
    circuits_opened: list[str]
    """Subscriptions whose circuit these attempts opened."""


def _json_list(value: object) -> list[str] | None:
    """A JSON array column; SQL NULL and JSON null (older rows) both mean None."""
    if value is None:
        return None
    parsed = orjson.loads(value) if isinstance(value, str | bytes) else value
    if parsed is None:
        return None
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


def _subscription(dialect: Dialect, row: Row, seal: SecretSeal | None) -> SubscriptionRow:
    """A subscription row with its secrets opened (left sealed without `seal`:
    the dispatcher only matches events)."""
    last_delivery_at = row["last_delivery_at"]
    secret, previous_secret = row["secret"], row["previous_secret"]
    if seal is not None:
        secret = seal.open(secret, row["id"])
        if previous_secret is not None:
            previous_secret = seal.open(previous_secret, row["id"])

    def time_or_none(column: str) -> datetime | None:
        value = row[column]
        return None if value is None else dialect.read_time(value)

    return SubscriptionRow(
        id=row["id"],
        url=row["url"],
        events=_json_list(row["events"]) or [],
        entity_types=_json_list(row["entity_types"]),
        secret=secret,
        description=row["description"],
        active=dialect.read_bool(row["active"]),
        consecutive_failures=row["consecutive_failures"],
        disabled_reason=row["disabled_reason"],
        last_delivery_at=dialect.read_time(last_delivery_at) if last_delivery_at else None,
        last_error=row["last_error"],
        after_revision=row["after_revision"],
        created_at=dialect.read_time(row["created_at"]),
        updated_at=dialect.read_time(row["updated_at"]),
        failed_attempts=row["failed_attempts"],
        failing_since=time_or_none("failing_since"),
        failing_notified=row["failing_notified"],
        circuit_open_until=time_or_none("circuit_open_until"),
        circuit_probes=row["circuit_probes"],
        previous_secret=previous_secret,
        previous_secret_until=time_or_none("previous_secret_until"),
        rate_limit=row["rate_limit"],
        timeout_ms=row["timeout_ms"],
        max_attempts=row["max_attempts"],
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
    "failed_attempts",
    "failing_since",
    "failing_notified",
    "circuit_open_until",
    "circuit_probes",
    "rate_limit",
    "timeout_ms",
    "max_attempts",
)
# Written by a re-enable: a fresh start for the disable policy and the circuit.
HEALTHY: dict[str, object] = {
    "consecutive_failures": 0,
    "failed_attempts": 0,
    "failing_since": None,
    "failing_notified": 0,
    "circuit_open_until": None,
    "circuit_probes": 0,
}


def fair_share(subscriptions: int, concurrency: int, per_subscription: int) -> int:
    """Slots one of `subscriptions` with work may hold: all it may have alone,
    otherwise an equal part of the worker with one part kept free."""
    if subscriptions <= 1:
        return per_subscription
    return min(per_subscription, max(1, concurrency // (subscriptions + 1)))


class WebhookRepository:
    def __init__(self, store: SqlStateStore, seal: SecretSeal) -> None:
        self.store = store
        self.seal = seal
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
                "updated_at, rate_limit, timeout_ms, max_attempts) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9, $10, $11, $12)",
                values["id"],
                values["url"],
                orjson.dumps(values["events"]).decode(),
                None
                if values.get("entity_types") is None
                else orjson.dumps(values["entity_types"]).decode(),
                self.seal.seal(str(values["secret"]), str(values["id"])),
                values.get("description"),
                True,
                int(head or 0),
                now,
                values.get("rate_limit"),
                values.get("timeout_ms"),
                values.get("max_attempts"),
            )
            row = await tx.fetchrow(_SELECT_SUBSCRIPTION, values["id"])
            assert row is not None
            return row

        return _subscription(dialect, await self.db.write(work), self.seal)

    async def seal_stored_secrets(self) -> int:
        """At startup: seal secrets stored in the clear (rows from before
        sealing existed) or with the previous WEBHOOK_SECRET_KEY, with the
        current key. `SecretKeyMismatch` when some were sealed with a key this
        process does not have. Returns how many values were sealed again."""
        seal = self.seal

        async def work(tx: Tx) -> int:
            resealed = 0
            rows = await tx.fetch(
                "SELECT id, secret, previous_secret FROM webhook_subscriptions"
                + self.dialect.for_update
            )
            for row in rows:
                values = [row["secret"], row["previous_secret"]]
                if not any(value is not None and seal.needs_sealing(value) for value in values):
                    continue
                secret, previous = (
                    None if value is None else seal.seal(seal.open(value, row["id"]), row["id"])
                    for value in values
                )
                await tx.execute(
                    "UPDATE webhook_subscriptions SET secret = $2, previous_secret = $3 "
                    "WHERE id = $1",
                    row["id"],
                    secret,
                    previous,
                )
                resealed += 1
            return resealed

        return await self.db.write(work)

    async def list_subscriptions(self) -> list[SubscriptionRow]:
        rows = await self.db.read(
            lambda tx: tx.fetch(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions ORDER BY created_at, id"
            )
        )
        return [_subscription(self.dialect, row, self.seal) for row in rows]

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None:
        row = await self.db.read(lambda tx: tx.fetchrow(_SELECT_SUBSCRIPTION, subscription_id))
        return None if row is None else _subscription(self.dialect, row, self.seal)

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
        return None if row is None else _subscription(dialect, row, self.seal)

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
                f"WHERE id = $1 AND status = $5 AND {_EVENT_KEPT}",
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
                _delivery_values(
                    dialect,
                    subscription.id,
                    record,
                    subscription.attempt_limit(attempt_limit),
                    now,
                    PENDING,
                )
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

    async def resend_skipped(
        self, subscription_id: str, attempt_limit: int
    ) -> tuple[int, int | None, int | None]:
        """Queue again exactly the deliveries skipped while the subscription was
        disabled. They keep their ids, so each entity's go in revision order."""
        now = self.dialect.time(utc_now())

        async def work(tx: Tx) -> tuple[int, int | None, int | None]:
            # Retention may have pruned the events of the oldest: those fail.
            await tx.execute(
                "UPDATE webhook_deliveries SET status = $3, last_error = $4, updated_at = $5 "
                f"WHERE subscription_id = $1 AND status = $2 AND NOT {_EVENT_KEPT}",
                subscription_id,
                SKIPPED,
                FAILED,
                EVENT_PRUNED,
                now,
            )
            found = await tx.fetchrow(
                "SELECT count(*) AS skipped, min(revision) AS first, max(revision) AS last "
                "FROM webhook_deliveries WHERE subscription_id = $1 AND status = $2",
                subscription_id,
                SKIPPED,
            )
            assert found is not None
            if not found["skipped"]:
                return 0, None, None
            await tx.execute(
                "UPDATE webhook_deliveries SET status = $3, attempt_limit = attempts + $4, "
                "next_attempt_at = $5, locked_until = NULL, last_error = NULL, updated_at = $5 "
                "WHERE subscription_id = $1 AND status = $2",
                subscription_id,
                SKIPPED,
                PENDING,
                attempt_limit,
                now,
            )
            await self._announce_deliveries(tx)
            return int(found["skipped"]), found["first"], found["last"]

        resent = await self.db.write(work)
        self.deliveries_ready.notify()
        return resent

    async def rotate_secret(
        self, subscription_id: str, secret: str, previous_until: datetime
    ) -> SubscriptionRow | None:
        """The current secret becomes the previous one, signing until `previous_until`."""
        dialect = self.dialect

        async def work(tx: Tx) -> Row | None:
            changed = await tx.execute(
                "UPDATE webhook_subscriptions SET previous_secret = secret, "
                "previous_secret_until = $3, secret = $2, updated_at = $4 WHERE id = $1",
                subscription_id,
                self.seal.seal(secret, subscription_id),
                dialect.time(previous_until),
                dialect.time(utc_now()),
            )
            if not changed:
                return None
            return await tx.fetchrow(_SELECT_SUBSCRIPTION, subscription_id)

        row = await self.db.write(work)
        return None if row is None else _subscription(dialect, row, self.seal)

    # -- the worker's side ----------------------------------------------------------

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
                _subscription(dialect, row, None)
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
                _delivery_values(
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
        rates: DeliveryRates | None = None,
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
        deliveries until it drains.

        A subscription whose circuit is open is left out the same way until its
        next probe is due; then one delivery is claimed as the probe, and the
        circuit is pushed past the lease so no other worker probes meanwhile.
        A subscription with a `rateLimit` gets no more deliveries than `rates`
        allows now (and none while its bucket is empty)."""
        dialect = self.dialect
        now = utc_now()
        active = [sub for sub, count in in_flight.items() if count > 0]
        share = fair_share(len(active), concurrency, per_subscription)
        held = [sub for sub in active if in_flight[sub] >= share]
        if rates is not None:
            held.extend(rates.exhausted())
        saturated = dialect.text_list(held)
        candidates = (
            "SELECT d.id, d.subscription_id, (SELECT s.circuit_open_until IS NOT NULL "
            "FROM webhook_subscriptions s WHERE s.id = d.subscription_id) AS probing, "
            "(SELECT s.rate_limit FROM webhook_subscriptions s "
            "WHERE s.id = d.subscription_id) AS rate_limit "
            "FROM webhook_deliveries d WHERE d.status = 'pending' "
            "AND d.next_attempt_at <= $1 "
            "AND (d.locked_until IS NULL OR d.locked_until < $1) "
            # A subscription disabled through the API pauses its deliveries; an
            # open circuit holds them until its next probe.
            "AND EXISTS (SELECT 1 FROM webhook_subscriptions s "
            "WHERE s.id = d.subscription_id AND s.active "
            "AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= $1)) "
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
            probed: set[str] = set()
            for row in found:
                subscription = row["subscription_id"]
                if row["probing"]:
                    if subscription in probed:
                        continue
                elif taken.get(subscription, 0) >= cap:
                    continue
                if rates is not None and not rates.take(subscription, row["rate_limit"]):
                    continue
                if row["probing"]:
                    if not await self._take_probe(tx, subscription, now, lease):
                        continue
                    probed.add(subscription)
                    probes.add(row["id"])
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
            claimed = await tx.fetch(
                "SELECT d.id AS delivery_id, d.subscription_id, d.attempts, d.attempt_limit, "
                "s.url, s.secret, s.previous_secret, s.previous_secret_until, s.timeout_ms, "
                "o.revision, o.event_id, o.event, o.entity_type, o.entity_id, "
                "o.data, o.created_at FROM webhook_deliveries d "
                "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
                "JOIN outbox o ON o.revision = d.revision "
                f"WHERE d.id {dialect.in_ints('$1')} ORDER BY d.id",
                id_list,
            )
            if len(claimed) < len(ids):
                # Requeued by a retry while retention pruned its event: it
                # cannot be sent, and must not hold its entity's later ones.
                await tx.execute(
                    f"UPDATE webhook_deliveries SET status = $2, last_error = $3, "
                    f"locked_until = NULL WHERE id {dialect.in_ints('$1')} AND NOT {_EVENT_KEPT}",
                    id_list,
                    FAILED,
                    EVENT_PRUNED,
                )
            return claimed

        probes: set[int] = set()
        rows = await self.db.write(work)
        return [
            ClaimedDelivery(
                id=row["delivery_id"],
                subscription_id=row["subscription_id"],
                url=row["url"],
                secret=self.seal.open(row["secret"], row["subscription_id"]),
                attempt=row["attempts"] + 1,
                attempt_limit=row["attempt_limit"],
                event=event_record(dialect, row),
                previous_secret=self._previous_secret(row, now),
                probe=row["delivery_id"] in probes,
                timeout_ms=row["timeout_ms"],
            )
            for row in rows
        ]

    def _previous_secret(self, row: Row, now: datetime) -> str | None:
        previous, until = row["previous_secret"], row["previous_secret_until"]
        if previous is None or until is None or self.dialect.read_time(until) <= now:
            return None
        return self.seal.open(previous, row["subscription_id"])

    async def _take_probe(
        self, tx: Tx, subscription_id: str, now: datetime, lease: timedelta
    ) -> bool:
        """Claim the right to probe an open circuit whose probe is due: true
        for exactly one claimer (the update re-checks the row it locks)."""
        dialect = self.dialect
        return bool(
            await tx.execute(
                "UPDATE webhook_subscriptions SET circuit_open_until = $2 WHERE id = $1 "
                "AND circuit_open_until IS NOT NULL AND circuit_open_until <= $3",
                subscription_id,
                dialect.time(now + lease),
                dialect.time(now),
            )
        )

    async def record_attempts(
        self, results: Sequence[AttemptResult], policy: FailurePolicy
    ) -> Recorded:
        """Store finished attempts and their consequences in one transaction:
        each delivery's new status, in order, the operational events to publish
        once it commits, and when opened circuits want their next probe."""
        dialect = self.dialect
        now = utc_now()

        async def work(tx: Tx) -> Recorded:
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
            recorded = Recorded([], [], [], [])
            if all(r.succeeded for r in results):
                await self._record_successes(tx, results, now)
                recorded.statuses.extend([SUCCEEDED] * len(results))
                return recorded
            # A failure in the batch: in order, one by one, so the failure
            # counts of each subscription see successes and failures as they
            # happened.
            for result in results:
                if result.succeeded:
                    await self._record_successes(tx, [result], now)
                    recorded.statuses.append(SUCCEEDED)
                else:
                    await self._record_failure(tx, result, now, policy, recorded)
            return recorded

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
        # failure streak or an open circuit ended, or a stale timestamp).
        # Sorted, so two workers lock subscriptions in the same order.
        stale = dialect.time(now - LAST_DELIVERY_RESOLUTION)
        await tx.executemany(
            "UPDATE webhook_subscriptions SET consecutive_failures = 0, failed_attempts = 0, "
            "failing_since = NULL, failing_notified = 0, circuit_open_until = NULL, "
            "circuit_probes = 0, last_delivery_at = $2, last_error = NULL WHERE id = $1 "
            "AND (consecutive_failures <> 0 OR failed_attempts <> 0 "
            "OR circuit_open_until IS NOT NULL OR last_error IS NOT NULL "
            "OR last_delivery_at IS NULL OR last_delivery_at < $3)",
            [(sub, stamp, stale) for sub in sorted({r.subscription_id for r in successes})],
        )

    async def _record_failure(
        self,
        tx: Tx,
        result: AttemptResult,
        now: datetime,
        policy: FailurePolicy,
        recorded: Recorded,
    ) -> None:
        dialect = self.dialect
        stamp = dialect.time(now)
        exhausted = result.attempt >= result.attempt_limit
        counted = await tx.fetchrow(
            "UPDATE webhook_subscriptions SET failed_attempts = failed_attempts + 1, "
            "consecutive_failures = consecutive_failures + $4, "
            "failing_since = COALESCE(failing_since, $2), last_delivery_at = $2, "
            "last_error = $3 WHERE id = $1 RETURNING url, active, consecutive_failures, "
            "failed_attempts, failing_since, failing_notified, circuit_open_until, circuit_probes",
            result.subscription_id,
            stamp,
            result.error,
            1 if exhausted else 0,
        )
        if counted is None:
            # Deleted meanwhile, with its deliveries.
            recorded.statuses.append(FAILED)
            return
        open_until = counted["circuit_open_until"]
        streak = FailureStreak(
            active=dialect.read_bool(counted["active"]),
            consecutive_failures=counted["consecutive_failures"],
            failed_attempts=counted["failed_attempts"],
            failing_since=dialect.read_time(counted["failing_since"]),
            failing_notified=counted["failing_notified"],
            circuit_open_until=None if open_until is None else dialect.read_time(open_until),
            circuit_probes=counted["circuit_probes"],
        )
        verdict = policy.judge(
            streak, now=now, probe=result.probe, gone=result.gone, exhausted=exhausted
        )
        # A failure cut short by a disabled subscription did not exhaust its
        # retries: it is skipped, and `replay?missing=true` sends it again.
        if exhausted or result.gone:
            status = FAILED
        elif verdict.disable_reason or not streak.active:
            status = SKIPPED
        else:
            status = PENDING
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
        recorded.statuses.append(status)
        notified = max(streak.failing_notified, verdict.announce_percent or 0)
        await tx.execute(
            "UPDATE webhook_subscriptions SET circuit_open_until = $2, circuit_probes = $3, "
            "failing_notified = $4 WHERE id = $1",
            result.subscription_id,
            None
            if verdict.circuit_open_until is None
            else dialect.time(verdict.circuit_open_until),
            verdict.circuit_probes,
            notified,
        )
        if verdict.circuit_open_until is not None and verdict.circuit_open_until != (
            streak.circuit_open_until
        ):
            recorded.probes_due.append(verdict.circuit_open_until)
        if verdict.circuit_opened:
            recorded.circuits_opened.append(result.subscription_id)
        facts: dict[str, object] = {
            "subscriptionId": result.subscription_id,
            "url": counted["url"],
            "consecutiveFailures": streak.consecutive_failures,
            "maxConsecutiveFailures": policy.max_consecutive_failures,
            "failingSince": streak.failing_since.isoformat(),
            "lastError": result.error,
        }
        if verdict.announce_percent is not None:
            recorded.notices.append(
                Notice(
                    "subscription.failing",
                    result.subscription_id,
                    {**facts, "policyPercent": verdict.announce_percent},
                )
            )
        if verdict.disable_reason is not None:
            await self._disable(tx, result.subscription_id, verdict.disable_reason, stamp)
            recorded.notices.append(
                Notice(
                    "subscription.disabled",
                    result.subscription_id,
                    {**facts, "reason": verdict.disable_reason},
                )
            )

    async def _disable(self, tx: Tx, subscription_id: str, reason: str, stamp: object) -> None:
        """Disable a subscription; what it still had queued is skipped."""
        await tx.execute(
            "UPDATE webhook_subscriptions SET active = $2, disabled_reason = $3, "
            "updated_at = $4 WHERE id = $1",
            subscription_id,
            False,
            reason,
            stamp,
        )
        await tx.execute(
            "UPDATE webhook_deliveries SET status = $2, locked_until = NULL, last_error = $3, "
            "updated_at = $4 WHERE subscription_id = $1 AND status = $5",
            subscription_id,
            SKIPPED,
            f"subscription disabled: {reason}",
            stamp,
            PENDING,
        )


# The delivery's event is still in the outbox (retention prunes old ones).
_EVENT_KEPT = "EXISTS (SELECT 1 FROM outbox o WHERE o.revision = webhook_deliveries.revision)"
EVENT_PRUNED = "the event is no longer kept (retention)"
_SELECT_SUBSCRIPTION = f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = $1"
_INSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries (subscription_id, revision, event_id, event, ordering_key, "
    "status, attempts, attempt_limit, next_attempt_at, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $8, $8)"
)


def _delivery_values(
    dialect: Dialect,
    subscription_id: str,
    record: EventRecord,
    attempt_limit: int,
    now: datetime,
    status: str,
) -> tuple[object, ...]:
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
