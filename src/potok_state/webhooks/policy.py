"""What a failed attempt leads to (docs/webhooks.md, "When a subscription is
disabled" and "Circuit breaker"): pure rules, applied by repository/health.py
inside the transaction that records the attempt.

Two counters, both reset by any success:
* `failed_attempts`: attempts in a row that failed. At `circuit_failures` the
  subscription's circuit opens: its deliveries wait, burning no attempts, and
  one probe per growing interval (`probe_delay` × 2ⁿ, at most
  `max_probe_delay`) tests the receiver.
* `consecutive_failures`: deliveries in a row that exhausted their retries. The
  subscription is disabled only when this reaches `max_consecutive_failures`
  **and** the failures have lasted `disable_after` (since `failing_since`, the
  first failed attempt after the last success). A receiver that blinks is
  never disabled; one that is gone for a day is.

`subscription.failing` is announced when the streak first reaches 50 % and
90 % of the policy: the smaller of the two shares (count and duration), since
both must be full to disable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from potok_state.settings import WebhookSettings

FAILING_THRESHOLDS = (50, 90)


@dataclass(frozen=True, slots=True)
class FailureStreak:
    """A subscription's counters, with the failure being recorded counted in."""

    active: bool
    consecutive_failures: int
    failed_attempts: int
    failing_since: datetime
    failing_notified: int
    circuit_open_until: datetime | None
    circuit_probes: int


@dataclass(frozen=True, slots=True)
class FailureVerdict:
    disable_reason: str | None
    circuit_open_until: datetime | None
    circuit_probes: int
    circuit_opened: bool
    """The circuit opened with this failure (it was closed)."""
    announce_percent: int | None
    """A share of the disable policy reached for the first time (50 or 90)."""
    policy_percent: int


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    max_consecutive_failures: int
    disable_after: timedelta
    circuit_failures: int
    probe_delay: timedelta
    max_probe_delay: timedelta

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> FailurePolicy:
        return cls(
            max_consecutive_failures=settings.max_consecutive_failures,
            disable_after=timedelta(milliseconds=settings.disable_after),
            circuit_failures=settings.circuit_failures,
            probe_delay=timedelta(milliseconds=settings.circuit_probe_delay),
            max_probe_delay=timedelta(milliseconds=settings.circuit_max_probe_delay),
        )

    def probe_interval(self, failed_probes: int) -> timedelta:
        interval: timedelta = self.probe_delay * (2 ** min(failed_probes, 30))
        return min(interval, self.max_probe_delay)

    def policy_percent(self, streak: FailureStreak, now: datetime) -> int:
        by_count = streak.consecutive_failures / self.max_consecutive_failures
        lasted = now - streak.failing_since
        by_time = 1.0 if not self.disable_after else lasted / self.disable_after
        return int(min(by_count, by_time, 1.0) * 100)

    def judge(
        self, streak: FailureStreak, *, now: datetime, probe: bool, gone: bool, exhausted: bool
    ) -> FailureVerdict:
        open_until = streak.circuit_open_until
        probes = streak.circuit_probes
        opened = False
        if probe:
            # The receiver still fails: wait longer before the next probe.
            probes += 1
            open_until = now + self.probe_interval(probes)
        elif open_until is None and streak.failed_attempts >= self.circuit_failures:
            probes = 0
            open_until = now + self.probe_interval(0)
            opened = True
        percent = self.policy_percent(streak, now)
        disable_reason: str | None = None
        if gone:
            disable_reason = "the receiver answered 410 Gone"
        elif streak.active and exhausted and percent >= 100:
            disable_reason = (
                f"{streak.consecutive_failures} deliveries in a row failed after every retry, "
                f"failing since {streak.failing_since.isoformat()}"
            )
        announce = None
        if streak.active and disable_reason is None:
            reached = [t for t in FAILING_THRESHOLDS if streak.failing_notified < t <= percent]
            announce = reached[-1] if reached else None
        return FailureVerdict(
            disable_reason=disable_reason,
            circuit_open_until=open_until,
            circuit_probes=probes,
            circuit_opened=opened,
            announce_percent=announce,
            policy_percent=percent,
        )
