"""The large-store section of REPORT.md (bench/scale.py measures it)."""

from __future__ import annotations

from bench.load import LoadResult
from bench.scale import DEEP_HISTORY, HISTORY_PAGE, SEQUENTIAL_REQUESTS, ScalePhase, ScaleResult
from bench.scenarios import BACKEND_TITLES, SCALE_MIGRATE_START_GOAL, ScaleScenario

SCALE_HEADING = "## Large store (1 worker)"


def _ms(value: float) -> str:
    if value != value:  # NaN: no successful request
        return "—"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _cpu_us(result: LoadResult | None) -> str:
    if result is None or result.rate <= 0:
        return "—"
    return f"{result.server_cpu / result.rate * 1e6:,.0f}"


def _figure(scenario: ScaleScenario, phase: ScalePhase) -> str:
    """× ceiling (closed-loop rows) or p50 ms (one at a time) of one phase."""
    result = phase.results.get(scenario.key)
    if result is None:
        return "—"
    if scenario.sequential:
        return f"p50 {_ms(result.percentile(50))} ms"
    ratio = phase.ratio(scenario.key)
    return f"{result.rate:,.0f} req/s, {'—' if ratio is None else f'{ratio:.2f}'}×"


def _judge(scenario: ScaleScenario, run: ScaleResult) -> tuple[str, bool | None]:
    """(large ÷ small, whether the goal is met)."""
    small, large = run.small.results.get(scenario.key), run.large.results.get(scenario.key)
    if small is None or large is None or not scenario.goal:
        return "—", None
    if scenario.min_of_small is not None:
        small_ratio, large_ratio = run.small.ratio(scenario.key), run.large.ratio(scenario.key)
        if not small_ratio or large_ratio is None:
            return "—", None
        share = large_ratio / small_ratio
        return f"{share:.2f}", share >= scenario.min_of_small
    small_p50, large_p50 = small.percentile(50), large.percentile(50)
    growth = f"{large_p50 / small_p50:.2f}" if small_p50 > 0 else "—"
    if scenario.max_p50_of_small is not None:
        return growth, large_p50 <= scenario.max_p50_of_small * small_p50
    if scenario.max_p50_ms is not None:
        return growth, large_p50 <= scenario.max_p50_ms
    return growth, None


def _verdict(text: str, met: bool | None) -> str:
    if not text or met is None:
        return "—"
    return f"{text}: **{'met' if met else 'missed'}**"


def scale_section(results: list[ScaleResult], scenarios: tuple[ScaleScenario, ...]) -> list[str]:
    if not results:
        return []
    states = results[0].large.states
    out = [
        SCALE_HEADING,
        "",
        f"One database per backend, 1,000 `user` states and one entity with "
        f"{DEEP_HISTORY:,} history rows written by bulk SQL; the rows below on a fresh "
        f"server (`serve`, one worker, no cache); then the store grown to {states:,} states "
        "(each with its creation in the history) by bulk SQL, `potok-state migrate` and a "
        "fresh server timed on it, and the same rows again. GET, PUT and POST are the "
        "closed-loop rows of the *no cache* profile (GETs spread over every seeded state); "
        f"the list and the history are sent one at a time ({SEQUENTIAL_REQUESTS} requests "
        f"after 10 unmeasured), the history {HISTORY_PAGE} changes a page, walking its "
        "cursors, so their p50 is one request's latency.",
        "",
        "| backend | path | 1,000 states | server CPU µs per request | "
        f"{states:,} states | server CPU µs per request | {states:,} ÷ 1,000 | goal |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for run in results:
        title = BACKEND_TITLES.get(run.backend, run.backend)
        for scenario in scenarios:
            share, met = _judge(scenario, run)
            out.append(
                f"| {title} | {scenario.title} | {_figure(scenario, run.small)} | "
                f"{_cpu_us(run.small.results.get(scenario.key))} | "
                f"{_figure(scenario, run.large)} | "
                f"{_cpu_us(run.large.results.get(scenario.key))} | {share} | "
                f"{_verdict(scenario.goal, met)} |"
            )
    out += [
        "",
        "| backend | states | seeding s (bulk SQL) | `potok-state migrate` s | start-up s "
        "(spawn → liveness) | migrate + start s | goal |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    goal = SCALE_MIGRATE_START_GOAL
    for run in results:
        within = goal.max_ms is not None and run.migrate_and_start * 1000 <= goal.max_ms
        out.append(
            f"| {BACKEND_TITLES.get(run.backend, run.backend)} | {run.large.states:,} | "
            f"{run.seed_seconds:.1f} | {run.migrate_seconds:.2f} | {run.start_seconds:.2f} | "
            f"{run.migrate_and_start:.2f} | {_verdict(goal.text, within)} |"
        )
    out += [
        "",
        "*× ceiling* is to the mean of the two ceiling rows of the same server; "
        f"*{states:,} ÷ 1,000* divides the large store's × ceiling by the small one's "
        "(GET, PUT, POST) or its p50 by the small one's (list, history). Seeding time is "
        "growing the store from 1,000 states (on PostgreSQL with the ANALYZE autovacuum "
        "would run).",
        "",
    ]
    return out


def scale_json(run: ScaleResult) -> dict[str, object]:
    def phase(p: ScalePhase) -> dict[str, object]:
        return {
            "states": p.states,
            "ceiling": p.ceiling,
            "rows": {
                key: {
                    "rate": r.rate,
                    "ratio": p.ratio(key),
                    "p50_ms": r.percentile(50),
                    "p99_ms": r.percentile(99),
                    "errors": r.errors,
                    "server_cpu": r.server_cpu,
                }
                for key, r in p.results.items()
            },
        }

    return {
        "backend": run.backend,
        "small": phase(run.small),
        "large": phase(run.large),
        "seed_seconds": run.seed_seconds,
        "migrate_seconds": run.migrate_seconds,
        "start_seconds": run.start_seconds,
    }
