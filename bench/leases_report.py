"""The leases section of REPORT.md: heartbeats per second (a request row of the
*no cache* profile, shown again here), and leases lapsing together (bench/leases.py
measures them), with what the service did."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bench.host import load_average
from bench.load import LEASE_SEED_TTL
from bench.report_cells import goal_verdict, p50_p99_max
from bench.requests_report import find_measurement, throughput_table
from bench.scenarios import BACKEND_TITLES, HEARTBEAT_KEY

if TYPE_CHECKING:
    from bench.leases import LapseResult, WindowCpu
    from bench.results import BenchRun, Measurement

LEASES_HEADING = "## Leases"


def _heartbeat_rows(run: BenchRun) -> list[Measurement]:
    """The heartbeat row of each backend (1 worker) between its server's ceilings."""
    rows: list[Measurement] = []
    for backend in run.options.backends:
        heartbeat = find_measurement(run, backend, HEARTBEAT_KEY)
        if heartbeat is None:
            continue
        same = [
            m
            for m in run.measurements
            if m.backend == backend and m.workers == 1 and m.profile == heartbeat.profile
        ]
        rows += [m for m in same if m.scenario.ceiling and not m.scenario.key.endswith("_end")]
        rows.append(heartbeat)
        rows += [m for m in same if m.scenario.ceiling and m.scenario.key.endswith("_end")]
    return rows


def _lapse_met(result: LapseResult) -> bool | None:
    goal = result.scenario.goal_for(result.backend)
    if goal is None or goal.max_ms is None or not result.lateness.count:
        return None
    clean = result.missing == 0 and result.duplicates == 0 and result.early == 0
    return result.lateness.max <= goal.max_ms and clean and result.lost == 0


def _seconds(value: float) -> str:
    return "—" if value != value else f"{value:.2f}"


def _window_cpu(window: WindowCpu | None, name: str) -> str:
    return "—" if window is None else f"{getattr(window, name):.2f}"


def _lapse_table(results: list[LapseResult]) -> list[str]:
    lines = [
        "| backend | deadlines set by | leases | set in s | deadline spread s | lapsed | "
        "duplicates | early | lapse − deadline p50 / p99 / max ms | first lapse − first "
        "deadline s | last lapse − last deadline s | lapse timestamps | lapse deliveries | lost | "
        "delivery duplicates | arrival − deadline p50 / p99 / max ms | last arrival − last "
        "deadline s | server CPU, to last lapse | server CPU, to last arrival | postgres CPU | "
        "bench CPU | machine busy | §9 goal |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        verdict = goal_verdict(r.scenario.goal_for(r.backend), _lapse_met(r))
        window = r.cpu_delivery or r.cpu_lapse
        lines.append(
            f"| {BACKEND_TITLES.get(r.backend, r.backend)} | {r.scenario.title} | "
            f"{r.leases:,} | {r.setup_seconds:.2f} | {r.deadline_spread:.3f} | {r.lapsed:,} | "
            f"{r.duplicates} | {r.early} | {p50_p99_max(r.lateness)} | {_seconds(r.first_lapse)} | "
            f"{_seconds(r.last_lapse)} | {r.timestamps:,} | {r.delivered:,} | {r.lost} | "
            f"{r.delivery_duplicates} | {p50_p99_max(r.delivery_lateness)} | "
            f"{_seconds(r.all_delivered)} | {_window_cpu(r.cpu_lapse, 'server')} | "
            f"{_window_cpu(r.cpu_delivery, 'server')} | {_window_cpu(window, 'postgres')} | "
            f"{_window_cpu(window, 'bench')} | "
            f"{'—' if window is None else f'{window.machine_busy:.0%}'} | {verdict} |"
        )
    return lines


def _lapse_behaviour_lines(results: list[LapseResult]) -> list[str]:
    lines = []
    for r in results:
        label = f"{BACKEND_TITLES.get(r.backend, r.backend)}, {r.scenario.title}"
        if r.scenario.setup == "heartbeat":
            created = (
                f"{r.created_delivered:,} `entity.created` deliveries, the last "
                f"{_seconds(r.created_done)} s after the first batch was sent (before the "
                "heartbeats)"
            )
        else:
            when = (
                "—"
                if r.created_done != r.created_done
                else f"{abs(r.created_done):.2f} s {'before' if r.created_done < 0 else 'after'}"
            )
            created = (
                f"{r.created_delivered:,} `entity.created` deliveries, the last {when} the "
                "last deadline"
            )
        metrics = ", ".join(f"`{k}` +{v:,.0f}" for k, v in r.metrics.items()) or "none"
        lines.append(
            f"* {label}: {created}; /metrics over the scenario: {metrics}"
            + (
                f"; {r.setup_errors} deadlines not set (first: `{r.error_sample}`)"
                if r.setup_errors
                else ""
            )
            + "."
        )
        if r.log.lines:
            events = ", ".join(f"`{event}` × {count}" for event, count in r.log.events.items())
            lines.append(
                f"* {label}: the server logged {r.log.lines} lines: {events}. First of each:"
            )
            lines += [f"  * `{sample.replace('`', '')}`" for sample in r.log.samples]
        else:
            lines.append(f"* {label}: the server logged nothing (LOG_LEVEL=warning).")
        lines += [f"* {label}: {note}." for note in r.notes]
    return lines


def leases_section(run: BenchRun) -> list[str]:
    heartbeats = _heartbeat_rows(run)
    if not heartbeats and not run.leases:
        return []
    options = run.options
    measured = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"{LEASES_HEADING} (1 worker only)",
        "",
        f"Measured by `{options.command}` ({measured}). The built-in `service` table "
        "(statuses starting, up, draining, down; lease default `{ttl: 15, onExpire: down}`), "
        f"one uvicorn worker, docs/leases.md. Load average as this section was written: "
        f"{load_average()}; the machine (2 cores) is shared, see *machine busy*.",
        "",
    ]
    if heartbeats:
        out += [
            "### Heartbeats per second",
            "",
            *throughput_table(heartbeats, backends=True),
            "",
            f"The *no cache* profile's server (the rows of its section above, when the run had "
            f"them): {options.seed} `service` states (`up`, ttl {LEASE_SEED_TTL} s) are seeded "
            f"with atomic batches; {options.concurrency} keep-alive connections, each looping "
            f"over its own slice of them, send `POST /api/v1/states/service/{{id}}/heartbeat` "
            f"without a body (the lease's own ttl) for {options.warmup:g} s warm-up then "
            f"{options.duration:g} s measured. A heartbeat writes only the lease: on SQLite one "
            "unit of the single writer thread (group commit), on PostgreSQL one UPDATE.",
            "",
        ]
    if run.leases:
        leases = options.leases
        out += [
            f"### {leases.leases:,} leases lapsing together",
            "",
            *_lapse_table(run.leases),
            "",
            f"One server per row (`serve`, one uvicorn worker, every setting at its default: "
            "the embedded webhook worker delivers, WEBHOOK_WORKER_CONCURRENCY 64), a "
            "subscription to `entity.*` on `service` for a receiver in the bench process "
            f"(aiohttp, 127.0.0.1, answers 200). {leases.leases:,} new `up` states get "
            f"deadlines {leases.ttl} s away. *Batch heartbeats*: the states are created "
            f"first with a {leases.hold_ttl} s lease, their `entity.created` deliveries "
            "awaited; then one round of batch heartbeats (1000 ids each, every request sent "
            f"at once) with ttl {leases.ttl}. *Creation*: atomic 1000-item batches of new "
            f"states with ttl {leases.ttl}, every request sent at once, so their "
            "`entity.created` deliveries are still on their way when the leases lapse. Each "
            "state's deadline is its `lease.expiresAt` in the answer; *set in* is first "
            "request → last answer, *deadline spread* the last deadline − the first.",
            "",
            "Each lapse is an ordinary change (`up → down`, reason `lease expired`): *lapse − "
            "deadline* is its event `timestamp` in `GET /api/v1/changes` (the commit time) − the "
            "state's deadline, over every state that lapsed; *lapsed* counts states with a lapse "
            "event (must be all), *duplicates* lapse events beyond one per state, *early* lapses "
            "before the deadline (both must be 0); *lapse timestamps* counts the distinct ones "
            "(the changes of one change set share one). *arrival − deadline*: the receiver's "
            "`time.time()` at the first lapse delivery of each state; *lost*: lapses never "
            "delivered (waiting stops 30 s after the last arrival, at most max(60 s, leases ÷ 50)"
            " after the last deadline). The goal needs the latest lapse ≤ 2 s after its deadline,"
            " every state lapsed once and every lapse delivered. CPU in cores from the first "
            "deadline to the last lapse, and to the last arrival (the other CPU columns), sampled"
            " every 0.1 s; *bench CPU* is the receiver's process. Times are the host's clock on "
            "SQLite, the database's on PostgreSQL (the same host): one clock with the bench's.",
            "",
            "### What the service did",
            "",
            *_lapse_behaviour_lines(run.leases),
            "",
        ]
    return out
