"""The delivery log: each delivery with its attempts, as the API shows it,
and what sends from it again: a failed delivery retried, a subscription's
events replayed from a revision or a time, and what a disabled subscription
missed (docs/webhooks.md, "What a disabled subscription misses"). A delivery
whose event retention pruned cannot be sent again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from potok_state.clock import utc_now
from potok_state.storage.database import Row, Tx
from potok_state.storage.rows import OUTBOX_COLUMNS, event_record
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.repository.dispatch import (
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

    async def retry(self, delivery_id: int, extra_attempts: int) -> bool:
        """Put a failed delivery back in the queue with a fresh retry budget."""
        now = self.dialect.time(utc_now())

        async def work(tx: Tx) -> bool:
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
            await announce_deliveries(tx)
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
                delivery_values(
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
                await queue_deliveries(tx, rows)
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

        resent = await self.db.write(work)
        self.deliveries_ready.notify()
        return resent
