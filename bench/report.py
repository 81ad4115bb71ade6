"""Render bench/REPORT.md: generated tables, plus a hand-written analysis section
that survives re-runs (kept between the ANALYSIS markers)."""

from __future__ import annotations

import os
import platform
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from bench.scenarios import PROFILES, Goal
from bench.webhooks import percentile

if TYPE_CHECKING:
    from bench.run import BenchRun, Measurement
    from bench.webhooks import LatencyResult, ThroughputResult

ANALYSIS_START = "<!-- ANALYSIS:START (hand-written, kept when the report is regenerated) -->"
ANALYSIS_END = "<!-- ANALYSIS:END -->"
_ANALYSIS_PLACEHOLDER = "_No analysis written yet for this run._"
_BACKEND_TITLES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _postgres_version() -> str:
    try:
        output = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return output.stdout.strip() or "?"


def load_average() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return " / ".join(f"{value:.2f}" for value in load) + " (1 / 5 / 15 min)"


def machine_info(backends: tuple[str, ...]) -> dict[str, str]:
    from bench.server import redis_version

    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "load average at start": load_average(),
        "libraries": ", ".join(
            f"{name} {_package_version(name)}"
            for name in ("fastapi", "uvicorn", "starlette", "pydantic", "sqlalchemy", "aiohttp")
        ),
        "sqlite": sqlite3.sqlite_version,
        "redis-server": redis_version(),
    }
    if "postgresql" in backends:
        info["postgresql"] = _postgres_version()
    return info


def _ms(value: float) -> str:
    if value != value:  # NaN: no successful request
        return "—"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _verdict(measurement: Measurement) -> str:
    goal = measurement.scenario.goal
    if goal is None or not goal.applies_to(measurement.backend):
        return "—"
    result = measurement.result
    if goal.min_ratio is not None and measurement.ratio is not None:
        met = measurement.ratio >= goal.min_ratio
    elif goal.max_p50_ms is not None:
        met = result.percentile(50) <= goal.max_p50_ms
    else:
        return "—"
    return f"{goal.text}: **{'met' if met else 'missed'}**"


def _throughput_table(measurements: list[Measurement]) -> list[str]:
    lines = [
        "| path | req/s | p50 ms | p99 ms | errors | × ceiling | §9 goal | server CPU | "
        "req per server CPU-s | × ceiling per CPU | generator CPU | postgres CPU | machine busy |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for m in measurements:
        r = m.result
        ratio = "—" if m.ratio is None else f"{m.ratio:.2f}"
        cpu_ratio = "—" if m.cpu_ratio is None else f"{m.cpu_ratio:.2f}"
        lines.append(
            f"| {m.scenario.title} | {r.rate:,.0f} | {_ms(r.percentile(50))} | "
            f"{_ms(r.percentile(99))} | {r.errors} | {ratio} | {_verdict(m)} | "
            f"{r.server_cpu:.2f} | {m.per_cpu:,.0f} | {cpu_ratio} | "
            f"{r.client_cpu:.2f} | {r.postgres_cpu:.2f} | "
            f"{r.machine_busy:.0%} |"
        )
    return lines


def _batch_table(measurements: list[Measurement]) -> list[str]:
    lines = [
        "| backend | path | batches | p50 ms | p99 ms | max ms | items/s | errors | §9 goal |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for m in measurements:
        r = m.result
        items_per_s = 1000 * len(r.latencies_ms) / r.elapsed if r.elapsed else 0.0
        worst = max(r.latencies_ms) if r.latencies_ms else float("nan")
        lines.append(
            f"| {_BACKEND_TITLES.get(m.backend, m.backend)} | {m.scenario.title} | "
            f"{r.requests} | {_ms(r.percentile(50))} | {_ms(r.percentile(99))} | {_ms(worst)} | "
            f"{items_per_s:,.0f} | {r.errors} | {_verdict(m)} |"
        )
    return lines


def _goal_verdict(goal: Goal | None, backend: str, met: bool | None) -> str:
    if goal is None or not goal.applies_to(backend) or met is None:
        return "—"
    return f"{goal.text}: **{'met' if met else 'missed'}**"


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
        goal = r.scenario.goal
        met = None
        if goal is not None and goal.max_p99_ms is not None and after:
            met = p99 <= goal.max_p99_ms and r.lost == 0
        lines.append(
            f"| {_BACKEND_TITLES.get(r.backend, r.backend)} | {r.worker} | {r.written} | "
            f"{r.write_rate:.0f} | {_ms(percentile(after, 50))} / {_ms(p99)} / "
            f"{_ms(max(after) if after else float('nan'))} | "
            f"{_ms(percentile(r.after_request_ms, 50))} / "
            f"{_ms(percentile(r.after_request_ms, 99))} | "
            f"{_ms(percentile(r.write_ms, 50))} / {_ms(percentile(r.write_ms, 99))} | "
            f"{r.lost} | {r.duplicates} | {r.write_errors} | "
            f"{_goal_verdict(goal, r.backend, met)} |"
        )
    return lines


def _deliveries_table(results: list[ThroughputResult]) -> list[str]:
    lines = [
        "| backend | path | worker | deliveries | deliveries/s | raw POST/s (before, after) | "
        "× raw | §9 goal | lost | duplicates | spawn → first s | worker CPU | postgres CPU | "
        "receiver CPU | raw client CPU |",
        "|---|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for t in results:
        goal = t.scenario.goal
        met = None
        if goal is not None and goal.min_ratio is not None and t.ratio is not None:
            met = t.ratio >= goal.min_ratio and t.lost == 0
        raw = ", ".join(f"{rate:,.0f}" for rate in t.raw_rates)
        ratio = "—" if t.ratio is None else f"{t.ratio:.2f}"
        lines.append(
            f"| {_BACKEND_TITLES.get(t.backend, t.backend)} | {t.scenario.title} | {t.worker} | "
            f"{t.delivered:,} / {t.expected:,} | {t.rate:,.0f} | {t.raw_rate:,.0f} ({raw}) | "
            f"{ratio} | {_goal_verdict(goal, t.backend, met)} | {t.lost} | {t.duplicates} | "
            f"{t.first_after_start:.2f} | {t.worker_cpu:.2f} | {t.postgres_cpu:.2f} | "
            f"{t.receiver_cpu:.2f} | {t.raw_client_cpu:.2f} |"
        )
    return lines


def _webhook_section(run: BenchRun) -> list[str]:
    if not run.delivery_latencies and not run.delivery_rates:
        return []
    deliveries = run.options.deliveries
    out = [
        "## Webhook delivery",
        "",
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
            "ceiling). The worker keeps at most 8 "
            "attempts in flight per subscription (`DeliveryWorker.per_subscription`), so one "
            "subscription cannot use the whole concurrency; 8 subscriptions can. CPU in "
            "cores over first → last arrival.",
            "",
        ]
    return out


def render(run: BenchRun, machine: dict[str, str]) -> str:
    options = run.options
    out = [
        "# Potok State Service — bench report",
        "",
        "Generated by `bench/run.py` (see bench/README.md). The tables are regenerated on "
        "every full run; only the *Analysis* section at the end is hand-written.",
        "",
        "## Run",
        "",
        f"* Command: `{options.command}`",
        *(f"* {name}: {value}" for name, value in machine.items()),
        f"* Method: the real server (`potok-state serve`: one uvicorn worker, "
        f"LOG_LEVEL=warning, throttling off) as a subprocess; the load generator is one "
        f"separate process (aiohttp, {options.concurrency} keep-alive connections, "
        f"{options.warmup:g} s warm-up then {options.duration:g} s measured per scenario); "
        f"batches are sent one at a time, {options.batches} per scenario after one warm-up "
        f"batch. {options.seed} `user` states are seeded before GET/PUT; PUTs cycle "
        "online/offline/busy with new metadata, so each is a valid change.",
        "* Ratios (× ceiling) divide by the mean of the two ceiling rows of the same server "
        "(measured first and last), so drift during the run shows as those two rows "
        "differing from 1.00. *× ceiling per CPU* compares requests per second of server "
        "CPU instead (req/s ÷ server CPU): it estimates the ratio a server with a core to "
        "itself would show, and is the steadier figure when the machine is overloaded "
        "(it ignores time the server spends waiting, so it flatters I/O-bound paths).",
        "* CPU columns are in cores (1.00 = one core fully busy) over the measured window; "
        "*postgres CPU* sums every `postgres` process on the machine, *machine busy* is all "
        "cores, everything included — both also count other users of this shared, noisy "
        "machine (other engineers run test suites on it), so compare within a run, not "
        "across runs.",
        "",
    ]
    throughput = [m for m in run.measurements if not m.scenario.sequential]
    batches = [m for m in run.measurements if m.scenario.sequential]
    for backend in options.backends:
        for profile in PROFILES:
            rows = [m for m in throughput if m.backend == backend and m.profile == profile.key]
            if not rows:
                continue
            title = _BACKEND_TITLES.get(backend, backend)
            out += [f"## {title} — {profile.title}", "", *_throughput_table(rows), ""]
    if batches:
        out += [
            "## Atomic 1000-item batches (latency per batch)",
            "",
            *_batch_table(batches),
            "",
            f"With {options.batches} batches, p99 is the slowest batch (nearest rank); the "
            "§9 goal is judged on p50.",
            "",
        ]
    out += _webhook_section(run)
    out += ["## Cache and notes", ""]
    if run.redis:
        for backend, stats in run.redis.items():
            out.append(
                f"* {_BACKEND_TITLES.get(backend, backend)}: private redis-server held "
                f"{stats['keys']} keys at the end, {stats['hits']:,} keyspace hits, "
                f"{stats['misses']:,} misses."
            )
    out += [f"* {note}" for note in run.notes]
    if not run.redis and not run.notes:
        out.append("* Cached scenarios were not selected in this run.")
    for t in run.delivery_rates:
        if t.raw_errors:
            out.append(
                f"* {t.backend} / {t.scenario.key}: the raw client had {t.raw_errors} errors; "
                f"first: `{t.error_sample}`"
            )
    for r in run.delivery_latencies:
        if r.write_errors:
            out.append(
                f"* {r.backend} / {r.scenario.key}: {r.write_errors} writes failed; first: "
                f"`{r.error_sample}`"
            )
    errors = [m for m in run.measurements if m.result.errors]
    if errors:
        out += ["", "## Errors", ""]
        out += [
            f"* {m.backend} / {m.scenario.key}: {m.result.error_kinds}; first: "
            f"`{m.result.error_sample}`"
            for m in errors
        ]
    out += ["", "## Analysis", "", ANALYSIS_START, _ANALYSIS_PLACEHOLDER, ANALYSIS_END, ""]
    return "\n".join(out)


def keep_analysis(rendered: str, previous_path: Path) -> str:
    """Carry the hand-written analysis of the previous report into the new one."""
    try:
        previous = previous_path.read_text()
    except OSError:
        return rendered
    pattern = re.compile(re.escape(ANALYSIS_START) + r"\n(.*?)" + re.escape(ANALYSIS_END), re.S)
    found = pattern.search(previous)
    if found is None:
        return rendered
    return rendered.replace(
        f"{ANALYSIS_START}\n{_ANALYSIS_PLACEHOLDER}\n{ANALYSIS_END}",
        f"{ANALYSIS_START}\n{found.group(1)}{ANALYSIS_END}",
    )
