"""The request rows of REPORT.md (bench/load.py measures them): req/s, latency and
CPU against the ceiling, a section per backend, worker count and server profile;
the atomic batches; and each row's §9 verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.report_cells import cpu_us, goal_verdict, ms
from bench.scenarios import BACKEND_TITLES, PROFILES, section_label

if TYPE_CHECKING:
    from bench.results import BenchRun, Measurement


def measurement_met(measurement: Measurement) -> bool | None:
    """Whether the row meets its §9 goal on its backend (None: no goal there)."""
    goal = measurement.scenario.goal_for(measurement.backend)
    if goal is None:
        return None
    if goal.relative_to is not None:
        relative = measurement.relative
        return None if relative is None else relative >= (goal.min_ratio or 0)
    if goal.min_ratio is not None and measurement.ratio is not None:
        met = measurement.ratio >= goal.min_ratio
        if goal.not_below_one_worker and measurement.workers > 1:
            one = measurement.one_worker_ratio
            met = met and (one is None or measurement.ratio >= one)
        return met
    if goal.max_p50_ms is not None and measurement.result.latencies_ms:
        return measurement.result.percentile(50) <= goal.max_p50_ms
    return None


def _verdict(measurement: Measurement) -> str:
    verdict = goal_verdict(
        measurement.scenario.goal_for(measurement.backend), measurement_met(measurement)
    )
    relative, per_cpu = measurement.relative, measurement.relative_per_cpu
    if relative is not None and per_cpu is not None:
        verdict += f" ({relative:.2f}×; per server CPU-s {per_cpu:.2f}×)"
    return verdict


def throughput_table(measurements: list[Measurement], *, backends: bool = False) -> list[str]:
    """The request rows; with `backends`, a first column names each row's backend."""
    lines = [
        "| path | req/s | p50 ms | p99 ms | errors | × ceiling | §9 goal | server CPU | "
        "server CPU µs per request | req per server CPU-s | × ceiling per CPU | generator CPU | "
        "postgres CPU | machine busy |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    if backends:
        lines = ["| backend " + lines[0], "|---" + lines[1]]
    for m in measurements:
        r = m.result
        ratio = "—" if m.ratio is None else f"{m.ratio:.2f}"
        cpu_ratio = "—" if m.cpu_ratio is None else f"{m.cpu_ratio:.2f}"
        backend = f"| {BACKEND_TITLES.get(m.backend, m.backend)} " if backends else ""
        lines.append(
            f"{backend}| {m.scenario.title} | {r.rate:,.0f} | {ms(r.percentile(50))} | "
            f"{ms(r.percentile(99))} | {r.errors} | {ratio} | {_verdict(m)} | "
            f"{r.server_cpu:.2f} | {cpu_us(r.server_cpu, r.rate)} | {m.per_cpu:,.0f} | "
            f"{cpu_ratio} | "
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
            f"| {BACKEND_TITLES.get(m.backend, m.backend)} | {m.scenario.title} | "
            f"{r.requests} | {ms(r.percentile(50))} | {ms(r.percentile(99))} | {ms(worst)} | "
            f"{items_per_s:,.0f} | {r.errors} | {_verdict(m)} |"
        )
    return lines


def find_measurement(run: BenchRun, backend: str, key: str, workers: int = 1) -> Measurement | None:
    return next(
        (
            m
            for m in run.measurements
            if m.backend == backend and m.workers == workers and m.scenario.key == key
        ),
        None,
    )


def request_sections(run: BenchRun) -> list[str]:
    """A section of request rows for each backend, worker count and profile the run
    measured, then the atomic batches (1 worker)."""
    options = run.options
    out: list[str] = []
    throughput = [m for m in run.measurements if not m.scenario.sequential]
    batches = [m for m in run.measurements if m.scenario.sequential]
    for backend in options.backends:
        for count in options.workers:
            for profile in PROFILES:
                rows = [
                    m
                    for m in throughput
                    if m.backend == backend and m.workers == count and m.profile == profile.key
                ]
                if rows:
                    heading = section_label(backend, count, profile)
                    out += [f"## {heading}", "", *throughput_table(rows), ""]
    if batches:
        out += [
            "## Atomic 1000-item batches, 1 worker only (latency per batch)",
            "",
            *_batch_table(batches),
            "",
            f"With {options.batches} batches, p99 is the slowest batch (nearest rank); the "
            "§9 goal is judged on p50. Batches run in the *no cache* profile with one "
            "uvicorn worker only (one request at a time: more workers would not change it).",
            "",
        ]
    return out
