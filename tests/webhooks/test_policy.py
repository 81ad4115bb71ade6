"""The failure rules of webhooks/policy.py on their own: when the circuit opens
and re-arms, when a subscription is disabled, when `subscription.failing` is
announced (docs/webhooks.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from potok_state.webhooks.policy import FailurePolicy, FailureStreak

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
POLICY = FailurePolicy(
    max_consecutive_failures=10,
    disable_after=timedelta(hours=24),
    circuit_failures=5,
    probe_delay=timedelta(seconds=5),
    max_probe_delay=timedelta(minutes=10),
)


def streak(
    *,
    failures: int = 0,
    attempts: int = 1,
    lasted: timedelta = timedelta(0),
    notified: int = 0,
    open_until: datetime | None = None,
    probes: int = 0,
) -> FailureStreak:
    return FailureStreak(
        active=True,
        consecutive_failures=failures,
        failed_attempts=attempts,
        failing_since=NOW - lasted,
        failing_notified=notified,
        circuit_open_until=open_until,
        circuit_probes=probes,
    )


def test_many_failures_in_a_short_outage_do_not_disable() -> None:
    verdict = POLICY.judge(
        streak(failures=50, attempts=200, lasted=timedelta(hours=2)),
        now=NOW,
        probe=False,
        gone=False,
        exhausted=True,
    )
    assert verdict.disable_reason is None
    assert verdict.policy_percent == 8  # 2 h of 24


def test_a_long_outage_with_few_failures_does_not_disable() -> None:
    verdict = POLICY.judge(
        streak(failures=9, lasted=timedelta(days=3)),
        now=NOW,
        probe=False,
        gone=False,
        exhausted=True,
    )
    assert verdict.disable_reason is None
    assert verdict.announce_percent == 90


def test_both_full_disable_but_only_when_a_delivery_exhausts() -> None:
    long_and_many = streak(failures=10, lasted=timedelta(hours=24))
    assert (
        POLICY.judge(
            long_and_many, now=NOW, probe=False, gone=False, exhausted=False
        ).disable_reason
        is None
    )
    verdict = POLICY.judge(long_and_many, now=NOW, probe=False, gone=False, exhausted=True)
    assert verdict.disable_reason is not None
    assert verdict.announce_percent is None


def test_410_disables_at_once() -> None:
    verdict = POLICY.judge(streak(), now=NOW, probe=False, gone=True, exhausted=False)
    assert verdict.disable_reason == "the receiver answered 410 Gone"


def test_failing_is_announced_once_per_threshold() -> None:
    half = streak(failures=5, lasted=timedelta(hours=12))
    assert (
        POLICY.judge(half, now=NOW, probe=False, gone=False, exhausted=True).announce_percent == 50
    )
    again = streak(failures=6, lasted=timedelta(hours=13), notified=50)
    assert (
        POLICY.judge(again, now=NOW, probe=False, gone=False, exhausted=True).announce_percent
        is None
    )
    # Both thresholds passed at once: the higher one is announced.
    jump = streak(failures=9, lasted=timedelta(hours=23))
    assert (
        POLICY.judge(jump, now=NOW, probe=False, gone=False, exhausted=True).announce_percent == 90
    )


def test_the_circuit_opens_then_probes_further_apart_up_to_the_cap() -> None:
    closed = POLICY.judge(streak(attempts=4), now=NOW, probe=False, gone=False, exhausted=False)
    assert closed.circuit_open_until is None
    opened = POLICY.judge(streak(attempts=5), now=NOW, probe=False, gone=False, exhausted=False)
    assert (opened.circuit_opened, opened.circuit_open_until) == (True, NOW + timedelta(seconds=5))
    intervals = []
    probes = 0
    for _ in range(10):
        verdict = POLICY.judge(
            streak(attempts=9, open_until=NOW, probes=probes),
            now=NOW,
            probe=True,
            gone=False,
            exhausted=False,
        )
        assert verdict.circuit_open_until is not None
        intervals.append((verdict.circuit_open_until - NOW).total_seconds())
        probes = verdict.circuit_probes
    assert intervals[:4] == [10, 20, 40, 80]
    assert intervals[-1] == 600
    # A failure that is not a probe leaves an open circuit as it is.
    held = POLICY.judge(
        streak(attempts=9, open_until=NOW + timedelta(seconds=3), probes=2),
        now=NOW,
        probe=False,
        gone=False,
        exhausted=False,
    )
    assert (held.circuit_open_until, held.circuit_probes) == (NOW + timedelta(seconds=3), 2)
