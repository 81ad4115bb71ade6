"""The webhook delivery section of REPORT.md (bench/webhooks.py measures it):
change → first delivery attempt, and deliveries per second of one worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.report_cells import cpu_us, goal_verdict, ms
from bench.scenarios import BACKEND_TITLES
from bench.webhooks import percentile

if TYPE_CHECKING:
    from bench.results import BenchRun
    from bench.webhooks import LatencyResult, ThroughputResult


def _latency_met(result: LatencyResult) -> bool | None:
    goal = result.scenario.goal_for(result.backend)
    if goal is None or goal.max_p99_ms is None or not result.after_response_ms:
        return None
    return percentile(result.after_response_ms, 99) <= goal.max_p99_ms and result.lost == 0


def throughput_met(result: ThroughputResult) -> bool | None:
    goal = result.scenario.goal_for(result.backend)
    if goal is None or goal.min_ratio is None or result.ratio is None:
        return None
    return result.ratio >= goal.min_ratio and result.lost == 0


def _latency_table(results: list[LatencyResult]) -> list[str]:
    lines = [
        "| backend | worker | changes | changes/s | arrival − response p50 / p99 / max ms | "
        "arrival − request p50 / p99 ms | write p50 / p99 ms | lost | duplicates | "
        "write errors | §9 goal |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        after = r.after_response_ms
        p99 = percentile(after, 99)
        lines.append(
            f"| {BACKEND_TITLES.get(r.backend, r.backend)} | {r.worker} | {r.written} | "
            f"{r.write_rate:.0f} | {ms(percentile(after, 50))} / {ms(p99)} / "
            f"{ms(max(after) if after else float('nan'))} | "
            f"{ms(percentile(r.after_request_ms, 50))} / "
            f"{ms(percentile(r.after_request_ms, 99))} | "
            f"{ms(percentile(r.write_ms, 50))} / {ms(percentile(r.write_ms, 99))} | "
            f"{r.lost} | {r.duplicates} | {r.write_errors} | "
            f"{goal_verdict(r.scenario.goal_for(r.backend), _latency_met(r))} |"
        )
    return lines


def _deliveries_table(results: list[ThroughputResult]) -> list[str]:
    lines = [
        "| backend | path | worker | deliveries | deliveries/s | raw POST/s (before, after) | "
        "× raw | §9 goal | lost | duplicates | spawn → first s | worker CPU | "
        "worker CPU µs per delivery | postgres CPU | postgres CPU µs per delivery | "
        "receiver CPU | raw client CPU | raw client CPU µs per POST |",
        "|---|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for t in results:
        verdict = goal_verdict(t.scenario.goal_for(t.backend), throughput_met(t))
        raw = ", ".join(f"{rate:,.0f}" for rate in t.raw_rates)
        ratio = "—" if t.ratio is None else f"{t.ratio:.2f}"
        lines.append(
            f"| {BACKEND_TITLES.get(t.backend, t.backend)} | {t.scenario.title} | {t.worker} | "
            f"{t.delivered:,} / {t.expected:,} | {t.rate:,.0f} | {t.raw_rate:,.0f} ({raw}) | "
            f"{ratio} | {verdict} | {t.lost} | {t.duplicates} | "
            f"{t.first_after_start:.2f} | {t.worker_cpu:.2f} | {cpu_us(t.worker_cpu, t.rate)} | "
            f"{t.postgres_cpu:.2f} | {cpu_us(t.postgres_cpu, t.rate)} | "
            f"{t.receiver_cpu:.2f} | {t.raw_client_cpu:.2f} | "
            f"{cpu_us(t.raw_client_cpu, t.raw_rate)} |"
        )
    return lines


def _per_subscription_default() -> str:
    """WEBHOOK_MAX_IN_FLIGHT_PER_SUBSCRIPTION as the service defaults it (the bench
    leaves it at its default), for the report's text."""
    try:
        from potok_state.settings import WebhookSettings

        field = WebhookSettings.model_fields["max_in_flight_per_subscription"]
        return f"left at its default, {int(field.default)}"
    except (ImportError, KeyError, TypeError, ValueError):
        return "left at its default"


def webhook_section(run: BenchRun) -> list[str]:
    if not run.delivery_latencies and not run.delivery_rates:
        return []
    deliveries = run.options.deliveries
    per_subscription = _per_subscription_default()
    out = [
        "## Webhook delivery (1 worker only)",
        "",
        "Webhook delivery runs only with one uvicorn worker per server, whatever "
        "`--workers` says: the figures are those of *one* delivery worker. "
        "A receiver in the bench process (aiohttp, 127.0.0.1) answers 200 and notes the "
        "first arrival of each entity's event; a subscription to `entity.*` is created "
        "through the API. On PostgreSQL the server runs with WEBHOOK_EMBEDDED_WORKER=false "
        "plus one `potok-state worker` process (woken by NOTIFY); on SQLite the server's "
        f"embedded worker delivers. WEBHOOK_WORKER_CONCURRENCY={deliveries.concurrency}.",
        "",
    ]
    if run.delivery_latencies:
        out += [
            "### Change → first delivery attempt",
            "",
            *_latency_table(run.delivery_latencies),
            "",
            f"{deliveries.changes} changes (POST, new `entityId` each) started at a fixed "
            f"{deliveries.rate:g}/s whatever the earlier ones do, after one unmeasured probe "
            "change. *arrival − response* is the §9 figure (it can be negative when the "
            "delivery beats the write's response); *arrival − request* includes the write. "
            "*lost*: written but not delivered within "
            "30 s after the last write (must be 0). The goal also needs lost = 0.",
            "",
        ]
    if run.delivery_rates:
        out += [
            "### Deliveries per second, one worker",
            "",
            *_deliveries_table(run.delivery_rates),
            "",
            f"With the worker stopped, {deliveries.backlog:,} deliveries are queued (atomic "
            "1000-item batches of new ids, shared among the subscriptions); then the worker "
            "starts and *deliveries/s* = (delivered − 1) ÷ (last − first arrival). *spawn → "
            "first* is the worker process's start-up, first dispatch and first claim. "
            "*raw POST/s* is a plain aiohttp client in the generator process POSTing a "
            "payload of the same shape to the same receiver at concurrency "
            f"{deliveries.concurrency}, before and after the drain (their mean is the "
            "ceiling). The worker keeps at most WEBHOOK_MAX_IN_FLIGHT_PER_SUBSCRIPTION "
            f"({per_subscription}) attempts in flight per subscription, "
            "so one subscription may not use the whole concurrency; 8 subscriptions can. "
            "CPU in cores over first → last arrival; *µs per delivery* (and per raw POST) "
            "is that CPU ÷ the rate, the steadier figure when the machine is shared.",
            "",
        ]
    return out
