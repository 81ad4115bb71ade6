"""The delivery log: each delivery with its attempts, as the API shows it,
and what sends from it again: a failed delivery retried, a subscription's
events replayed from a revision or a time, and what a disabled subscription
missed (docs/webhooks.md, "What a disabled subscription misses"). A delivery
whose event retention pruned cannot be sent again. A replay is counted before
it is queued, so one over WEBHOOK_REPLAY_MAX queues nothing (docs/webhooks.md,
"Replay limit")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from potok_state.clock import utc_now
from potok_state.storage.database import Row, Tx
from potok_state.storage.idempotency import IdempotencyWrite, keyed
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.repository.dispatch import (
    OUTBOX_KEY_COLUMNS,
    OutboxKey,
    announce_deliveries,
    delivery_values,
    queue_deliveries,
)
from potok_state.webhooks.repository.rows import (
    DELIVERY_COLUMNS,
    EVENT_KEPT,
    EVENT_PRUNED,
    FAILED,
    PENDING,
    SKIPPED,
    AttemptRow,
    DeliveryRow,
    SubscriptionRow,
)

# Outbox rows a replay reads, and deliveries it writes, per statement.
REPLAY_PAGE = 5000


@dataclass(slots=True)
class ReplayRange:
    revisions: list[int]
    """Of the events the subscription matches, oldest first."""
    first: int | None
    """The first and last revisions read (None: no event in the range)."""
    last: int | None
    complete: bool
    """The whole range was read (otherwise reading stopped past the limit)."""


class DeliveryLog:
    def __init__(self, store: SqlStateStore) -> None:
        self.db = store.db
        self.dialect = store.dialect
        # Set when deliveries become due in this process; other processes hear
        # NOTIFY on DELIVERIES_CHANNEL (dispatch.announce_deliveries).
        self.deliveries_ready = store.commits.deliveries_ready

    async def list_for(
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

    async def get(self, delivery_id: int) -> DeliveryRow | None:
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

    async def retry(
        self,
        delivery_id: int,
        extra_attempts: int,
        answer: IdempotencyWrite[tuple[bool, DeliveryRow | None]] | None = None,
    ) -> tuple[bool, DeliveryRow | None]:
        """Put a failed delivery back in the queue with a fresh retry budget
        (not when its event is no longer kept): whether it was, and the
        delivery as it is then (None: there is no such delivery)."""
        now = self.dialect.time(utc_now())

        async def work(tx: Tx) -> tuple[bool, DeliveryRow | None]:
            changed = await tx.execute(
                "UPDATE webhook_deliveries SET status = $2, attempt_limit = attempts + $3, "
                "next_attempt_at = $4, locked_until = NULL, updated_at = $4 "
                f"WHERE id = $1 AND status = $5 AND {EVENT_KEPT}",
                delivery_id,
                PENDING,
                extra_attempts,
                now,
                FAILED,
            )
            if changed:
                await announce_deliveries(tx)
            rows = await tx.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1", delivery_id
            )
            found = await self._with_attempts(tx, rows)
            return bool(changed), found[0] if found else None

        retried = await self.db.write(keyed(work, answer))
        self.deliveries_ready.notify()
        return retried

    async def replay_range(
        self,
        subscription: SubscriptionRow,
        *,
        from_revision: int,
        to_revision: int | None,
        since: datetime | None,
        limit: int,
    ) -> ReplayRange:
        """The events of the outbox a replay covers, from `from_revision` (and
        `since`) to `to_revision` or the head now, and the revisions of those
        the subscription matches. Read in pages, without locks; the reading
        stops at the page where the matches pass `limit` (a range over the
        limit is known without reading all of it)."""
        since_args = [] if since is None else [self.dialect.time(since)]
        page = (
            "SELECT revision, event, entity_type FROM outbox WHERE revision > $1 "
            f"AND revision <= $2 {'AND created_at >= $3 ' if since_args else ''}"
            f"ORDER BY revision LIMIT {REPLAY_PAGE}"
        )

        async def work(tx: Tx) -> ReplayRange:
            head = int(await tx.fetchval("SELECT value FROM revision_counter WHERE id = 1") or 0)
            end = head if to_revision is None else min(to_revision, head)
            found = ReplayRange(revisions=[], first=None, last=None, complete=False)
            after = from_revision - 1
            while not found.complete and len(found.revisions) <= limit:
                rows = await tx.fetch(page, after, end, *since_args)
                found.complete = len(rows) < REPLAY_PAGE
                if not rows:
                    break
                if found.first is None:
                    found.first = rows[0]["revision"]
                found.last = after = rows[-1]["revision"]
                found.revisions.extend(
                    row["revision"]
                    for row in rows
                    if subscription.matches(row["event"], row["entity_type"])
                )
            return found

        return await self.db.read(work)

    async def queue_replay(
        self,
        subscription: SubscriptionRow,
        revisions: Sequence[int],
        *,
        attempt_limit: int,
        answer: IdempotencyWrite[int] | None = None,
    ) -> int:
        """Queue a delivery of each of these events (those still kept) in one
        transaction; how many were queued."""
        dialect = self.dialect
        now = utc_now()
        limit = subscription.attempt_limit(attempt_limit)
        select = (
            f"SELECT {OUTBOX_KEY_COLUMNS} FROM outbox "
            f"WHERE revision {dialect.in_ints('$1')} ORDER BY revision"
        )

        async def work(tx: Tx) -> int:
            queued = 0
            for start in range(0, len(revisions), REPLAY_PAGE):
                chunk = dialect.int_list(list(revisions[start : start + REPLAY_PAGE]))
                rows = [
                    delivery_values(
                        dialect, subscription.id, OutboxKey.of(row), limit, now, PENDING
                    )
                    for row in await tx.fetch(select, chunk)
                ]
                if rows:
                    await queue_deliveries(tx, rows)
                queued += len(rows)
            return queued

        queued = await self.db.write(keyed(work, answer))
        self.deliveries_ready.notify()
        return queued

    async def resend_skipped(
        self,
        subscription_id: str,
        attempt_limit: int,
        answer: IdempotencyWrite[tuple[int, int | None, int | None]] | None = None,
    ) -> tuple[int, int | None, int | None]:
        """Queue again exactly the deliveries skipped while the subscription was
        disabled. They keep their ids, so each entity's go in revision order."""
        now = self.dialect.time(utc_now())

        async def work(tx: Tx) -> tuple[int, int | None, int | None]:
            # Retention may have pruned the events of the oldest: those fail.
            await tx.execute(
                "UPDATE webhook_deliveries SET status = $3, last_error = $4, updated_at = $5 "
                f"WHERE subscription_id = $1 AND status = $2 AND NOT {EVENT_KEPT}",
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
            await announce_deliveries(tx)
            return int(found["skipped"]), found["first"], found["last"]

        resent = await self.db.write(keyed(work, answer))
        self.deliveries_ready.notify()
        return resent
