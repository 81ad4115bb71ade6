"""Attempts: every finished attempt is a row, recorded in batches, one
transaction for all that finished meanwhile, with each delivery's new status;
a failure also counts against its subscription's health (health.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from potok_state.clock import utc_now
from potok_state.storage.database import Tx
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.notices import Notice
from potok_state.webhooks.policy import FailurePolicy
from potok_state.webhooks.repository.health import count_failure
from potok_state.webhooks.repository.rows import PENDING, SUCCEEDED

LAST_DELIVERY_RESOLUTION = timedelta(seconds=1)


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
class Recorded:
    statuses: list[str]
    """Each attempt's delivery status, in order."""
    notices: list[Notice]
    probes_due: list[datetime]
    """When circuits opened or re-armed by these attempts allow their next probe."""
    circuits_opened: list[str]
    """Subscriptions whose circuit these attempts opened."""


# A success ends a failure streak and an open circuit, and stamps the last delivery.
_HEALED = (
    "consecutive_failures = 0, failed_attempts = 0, failing_since = NULL, "
    "failing_notified = 0, circuit_open_until = NULL, circuit_probes = 0, "
    "last_delivery_at = $2, last_error = NULL"
)
_UNHEALED = (
    "(consecutive_failures <> 0 OR failed_attempts <> 0 OR circuit_open_until IS NOT NULL "
    "OR last_error IS NOT NULL OR last_delivery_at IS NULL OR last_delivery_at < $3)"
)
# PostgreSQL: successful attempts ($7, $8: started, duration; empty for
# successes whose attempts are already inserted), their deliveries and their
# subscriptions in one statement.
_SUCCEEDED_POSTGRES = (
    "WITH attempts AS (INSERT INTO webhook_attempts (delivery_id, attempt, started_at, "
    "duration_ms, status_code, error, succeeded) SELECT * FROM unnest($1::bigint[], "
    "$2::int[], $7::timestamptz[], $8::int[], $3::int[]) AS a(id, attempt, started_at, "
    "duration_ms, status_code) CROSS JOIN (VALUES (NULL::text, true)) AS ok(error, succeeded) "
    "WHERE cardinality($7::timestamptz[]) > 0), "
    f"delivered AS (UPDATE webhook_deliveries d SET status = '{SUCCEEDED}', "
    "attempts = r.attempt, locked_until = NULL, last_status_code = r.status_code, "
    "last_error = NULL, updated_at = $4 "
    "FROM unnest($1::bigint[], $2::int[], $3::int[]) AS r(id, attempt, status_code) "
    "WHERE d.id = r.id) "
    f"UPDATE webhook_subscriptions SET {_HEALED.replace('$2', '$4')} "
    f"WHERE id = ANY($5::text[]) AND {_UNHEALED.replace('$3', '$6')}"
)


class AttemptRecorder:
    def __init__(self, store: SqlStateStore) -> None:
        self.db = store.db
        self.dialect = store.dialect

    async def record_attempts(
        self, results: Sequence[AttemptResult], policy: FailurePolicy
    ) -> Recorded:
        """Store finished attempts and their consequences in one transaction
        of their own (`record`)."""
        now = utc_now()
        return await self.db.write(lambda tx: self.record(tx, results, policy, now))

    async def record(
        self, tx: Tx, results: Sequence[AttemptResult], policy: FailurePolicy, now: datetime
    ) -> Recorded:
        """Store finished attempts and their consequences: each delivery's new
        status, in order, the operational events to publish once the
        transaction commits, and when opened circuits want their next probe."""
        recorded = Recorded([], [], [], [])
        if not results:
            return recorded
        if self.dialect.name == "postgresql" and all(r.succeeded for r in results):
            # The common case in one statement: attempts, deliveries, subscriptions.
            await tx.execute(
                _SUCCEEDED_POSTGRES,
                [r.delivery_id for r in results],
                [r.attempt for r in results],
                [r.status_code for r in results],
                self.dialect.time(now),
                sorted({r.subscription_id for r in results}),
                self.dialect.time(now - LAST_DELIVERY_RESOLUTION),
                [r.started_at for r in results],
                [r.duration_ms for r in results],
            )
            recorded.statuses.extend([SUCCEEDED] * len(results))
            return recorded
        await self._insert_attempts(tx, results)
        if all(r.succeeded for r in results):
            await self._record_successes(tx, results, now)
            recorded.statuses.extend([SUCCEEDED] * len(results))
            return recorded
        # A failure in the batch: in order, one by one, so the failure counts
        # of each subscription see successes and failures as they happened.
        for result in results:
            if result.succeeded:
                await self._record_successes(tx, [result], now)
                recorded.statuses.append(SUCCEEDED)
            else:
                await self._record_failure(tx, result, now, policy, recorded)
        return recorded

    async def _insert_attempts(self, tx: Tx, results: Sequence[AttemptResult]) -> None:
        dialect = self.dialect
        if dialect.name == "postgresql":
            # One statement for the batch: one execution instead of one per row.
            await tx.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, "
                "status_code, error, succeeded) SELECT * FROM unnest($1::bigint[], $2::int[], "
                "$3::timestamptz[], $4::int[], $5::int[], $6::text[], $7::bool[])",
                [r.delivery_id for r in results],
                [r.attempt for r in results],
                [r.started_at for r in results],
                [r.duration_ms for r in results],
                [r.status_code for r in results],
                [r.error for r in results],
                [r.succeeded for r in results],
            )
            return
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

    async def _record_successes(
        self, tx: Tx, successes: Sequence[AttemptResult], now: datetime
    ) -> None:
        dialect = self.dialect
        stamp = dialect.time(now)
        # Successes of one subscription would all queue on its row lock across
        # workers; the row is only written when it says something new (a
        # failure streak or an open circuit ended, or a stale timestamp).
        # Sorted, so two workers lock subscriptions in the same order.
        subscriptions = sorted({r.subscription_id for r in successes})
        stale = dialect.time(now - LAST_DELIVERY_RESOLUTION)
        if dialect.name == "postgresql":
            await tx.execute(
                _SUCCEEDED_POSTGRES,
                [r.delivery_id for r in successes],
                [r.attempt for r in successes],
                [r.status_code for r in successes],
                stamp,
                subscriptions,
                stale,
                [],
                [],
            )
            return
        await tx.executemany(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, locked_until = NULL, "
            "last_status_code = $4, last_error = NULL, updated_at = $5 WHERE id = $1",
            [(r.delivery_id, SUCCEEDED, r.attempt, r.status_code, stamp) for r in successes],
        )
        await tx.executemany(
            f"UPDATE webhook_subscriptions SET {_HEALED} WHERE id = $1 AND {_UNHEALED}",
            [(sub, stamp, stale) for sub in subscriptions],
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
        outcome = await count_failure(
            tx,
            policy,
            subscription_id=result.subscription_id,
            error=result.error,
            now=now,
            exhausted=result.attempt >= result.attempt_limit,
            probe=result.probe,
            gone=result.gone,
        )
        await tx.execute(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, "
            "locked_until = NULL, last_status_code = $5, last_error = $6, updated_at = $7 "
            "WHERE id = $1",
            result.delivery_id,
            outcome.status,
            result.attempt,
            dialect.time(result.retry_at) if outcome.status == PENDING else stamp,
            result.status_code,
            result.error,
            stamp,
        )
        recorded.statuses.append(outcome.status)
        recorded.notices.extend(outcome.notices)
        if outcome.probe_due is not None:
            recorded.probes_due.append(outcome.probe_due)
        if outcome.circuit_opened:
            recorded.circuits_opened.append(result.subscription_id)
