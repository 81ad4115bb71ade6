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


class AttemptRecorder:
    def __init__(self, store: SqlStateStore) -> None:
        self.db = store.db
        self.dialect = store.dialect

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
