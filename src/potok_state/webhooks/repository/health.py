"""A subscription's health: what a failed attempt does to it, by the rules of
webhooks/policy.py (the circuit breaker and the disable policy), applied in
the transaction that records the attempt; and the fresh start a re-enable
writes. A disabled subscription's queued deliveries are `skipped`
(docs/webhooks.md, "When a subscription is disabled")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from potok_state.storage.database import Tx
from potok_state.webhooks.notices import Notice
from potok_state.webhooks.policy import FailurePolicy, FailureStreak
from potok_state.webhooks.repository.rows import FAILED, PENDING, SKIPPED

# Written by a re-enable: a fresh start for the disable policy and the circuit.
HEALTHY: dict[str, object] = {
    "consecutive_failures": 0,
    "failed_attempts": 0,
    "failing_since": None,
    "failing_notified": 0,
    "circuit_open_until": None,
    "circuit_probes": 0,
}


@dataclass(slots=True)
class FailureOutcome:
    status: str
    """The failed attempt's delivery status from now on."""
    notices: list[Notice] = field(default_factory=list)
    probe_due: datetime | None = None
    """When a circuit this failure opened or re-armed allows its next probe."""
    circuit_opened: bool = False


async def count_failure(
    tx: Tx,
    policy: FailurePolicy,
    *,
    subscription_id: str,
    error: str | None,
    now: datetime,
    exhausted: bool,
    probe: bool,
    gone: bool,
) -> FailureOutcome:
    """Count a failed attempt against its subscription, judge the streak and
    apply the verdict: the circuit, the policy's notices, the disable."""
    dialect = tx.dialect
    stamp = dialect.time(now)
    counted = await tx.fetchrow(
        "UPDATE webhook_subscriptions SET failed_attempts = failed_attempts + 1, "
        "consecutive_failures = consecutive_failures + $4, "
        "failing_since = COALESCE(failing_since, $2), last_delivery_at = $2, "
        "last_error = $3 WHERE id = $1 RETURNING url, active, consecutive_failures, "
        "failed_attempts, failing_since, failing_notified, circuit_open_until, circuit_probes",
        subscription_id,
        stamp,
        error,
        1 if exhausted else 0,
    )
    if counted is None:
        # Deleted meanwhile, with its deliveries.
        return FailureOutcome(FAILED)
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
    verdict = policy.judge(streak, now=now, probe=probe, gone=gone, exhausted=exhausted)
    # A failure cut short by a disabled subscription did not exhaust its
    # retries: it is skipped, and `replay?missing=true` sends it again.
    if exhausted or gone:
        outcome = FailureOutcome(FAILED)
    elif verdict.disable_reason or not streak.active:
        outcome = FailureOutcome(SKIPPED)
    else:
        outcome = FailureOutcome(PENDING)
    notified = max(streak.failing_notified, verdict.announce_percent or 0)
    await tx.execute(
        "UPDATE webhook_subscriptions SET circuit_open_until = $2, circuit_probes = $3, "
        "failing_notified = $4 WHERE id = $1",
        subscription_id,
        None if verdict.circuit_open_until is None else dialect.time(verdict.circuit_open_until),
        verdict.circuit_probes,
        notified,
    )
    if verdict.circuit_open_until is not None and verdict.circuit_open_until != (
        streak.circuit_open_until
    ):
        outcome.probe_due = verdict.circuit_open_until
    outcome.circuit_opened = verdict.circuit_opened
    facts: dict[str, object] = {
        "subscriptionId": subscription_id,
        "url": counted["url"],
        "consecutiveFailures": streak.consecutive_failures,
        "maxConsecutiveFailures": policy.max_consecutive_failures,
        "failingSince": streak.failing_since.isoformat(),
        "lastError": error,
    }
    if verdict.announce_percent is not None:
        outcome.notices.append(
            Notice(
                "subscription.failing",
                subscription_id,
                {**facts, "policyPercent": verdict.announce_percent},
            )
        )
    if verdict.disable_reason is not None:
        await _disable(tx, subscription_id, verdict.disable_reason, stamp)
        outcome.notices.append(
            Notice(
                "subscription.disabled",
                subscription_id,
                {**facts, "reason": verdict.disable_reason},
            )
        )
    return outcome


async def _disable(tx: Tx, subscription_id: str, reason: str, stamp: object) -> None:
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
