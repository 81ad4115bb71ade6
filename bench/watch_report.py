"""The watch streams section of REPORT.md (bench/watch.py measures it): change →
event at every watcher, writes per second with and without watchers, hostile
clients that never read, and what the service did."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bench.report_cells import goal_verdict, ms, p50_p99_max, spread_cell
from bench.scenarios import BACKEND_TITLES

if TYPE_CHECKING:
    from bench.load import LoadResult
    from bench.results import BenchRun
    from bench.scenarios import Goal
    from bench.watch_results import FanOut, SteadyWrites, WatchResult

WATCH_HEADING = "## Watch streams"


def _fan_out_met(result: WatchResult) -> bool | None:
    fan = result.fan_out
    goal = next(
        (s.goal_for(result.backend) for s in result.scenarios if s.key == "watch_latency"), None
    )
    if fan is None or goal is None or goal.max_p99_ms is None or not fan.after_response.count:
        return None
    return fan.after_response.p99 <= goal.max_p99_ms and fan.lost == 0


def _write_load_met(result: WatchResult) -> bool | None:
    load = result.writes
    goal = next(
        (s.goal_for(result.backend) for s in result.scenarios if s.key == "watch_writes"), None
    )
    if load is None or goal is None or goal.min_ratio is None or load.ratio is None:
        return None
    return load.ratio >= goal.min_ratio and load.lost == 0


def _watch_goal(result: WatchResult, key: str) -> Goal | None:
    return next((s.goal_for(result.backend) for s in result.scenarios if s.key == key), None)


def _steady_cells(writes: SteadyWrites | None) -> tuple[str, str]:
    """(write p50 / p99 ms, server CPU) of a steady-rate window, or dashes."""
    if writes is None:
        return "—", "—"
    return spread_cell(writes.write_ms.p50, writes.write_ms.p99), f"{writes.cpu.server:.2f}"


def _fan_out_cost(fan: FanOut) -> str:
    """Server CPU per change that the watchers add: (server CPU with − without) ÷ rate."""
    if fan.baseline is None or fan.writes.rate <= 0:
        return "—"
    return ms((fan.writes.cpu.server - fan.baseline.cpu.server) / fan.writes.rate * 1000)


def _pair_cost_us(fan: FanOut) -> float | None:
    """Server CPU per (event, watcher), µs: the fan-out cost per change ÷ watchers."""
    if fan.baseline is None or fan.writes.rate <= 0 or not fan.watchers:
        return None
    per_change = (fan.writes.cpu.server - fan.baseline.cpu.server) / fan.writes.rate
    return per_change / fan.watchers * 1e6


def _pair_cost_met(result: WatchResult) -> bool | None:
    goal = _watch_goal(result, "watch_cpu")
    cost = None if result.fan_out is None else _pair_cost_us(result.fan_out)
    if goal is None or goal.max_us is None or cost is None:
        return None
    return cost <= goal.max_us


def _filtered_met(result: WatchResult) -> bool | None:
    load = result.writes
    goal = _watch_goal(result, "watch_filtered")
    if load is None or load.filtered is None or goal is None or goal.min_ratio is None:
        return None
    ratio = load.ratio_of(load.filtered.result)
    window = load.filtered
    delivered = window.expected is None or window.received == window.expected
    return ratio is not None and ratio >= goal.min_ratio and delivered and not window.irregular


def _hostile_met(result: WatchResult) -> bool | None:
    goal = _watch_goal(result, "watch_hostile")
    if result.hostile is None or goal is None or goal.max_mb is None:
        return None
    hostile = result.hostile
    return hostile.growth_mb < goal.max_mb and hostile.closed and not hostile.health_failures


def _fan_out_table(results: list[WatchResult]) -> list[str]:
    lines = [
        "| backend | watchers | changes | changes/s | event − response p50 / p99 / max ms | "
        "event − request p50 / p99 ms | last watcher − response p50 / p99 / max ms | lost | "
        "duplicates | out of order | watchers with every change | write p50 / p99 ms, no "
        "watchers | write p50 / p99 ms, watchers | server CPU, no watchers | server CPU, "
        "watchers | fan-out server CPU ms per change | server CPU µs per (event, watcher) | "
        "§9 goal (CPU) | watcher process CPU | postgres CPU | machine busy | §9 goal (p99) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|---|",
    ]
    for r in results:
        fan = r.fan_out
        assert fan is not None
        without_ms, without_cpu = _steady_cells(fan.baseline)
        with_ms, with_cpu = _steady_cells(fan.writes)
        verdict = goal_verdict(_watch_goal(r, "watch_latency"), _fan_out_met(r))
        pair = _pair_cost_us(fan)
        pair_cell = "—" if pair is None else f"{pair:.2f}"
        pair_verdict = goal_verdict(_watch_goal(r, "watch_cpu"), _pair_cost_met(r))
        lines.append(
            f"| {BACKEND_TITLES.get(r.backend, r.backend)} | {fan.watchers} | "
            f"{fan.writes.changes} | {fan.writes.rate:.0f} | "
            f"{p50_p99_max(fan.after_response)} | "
            f"{spread_cell(fan.after_request.p50, fan.after_request.p99)} | "
            f"{p50_p99_max(fan.last_watcher)} | {fan.lost} | {fan.duplicates} | "
            f"{fan.out_of_order} | {fan.complete} / {fan.watchers} | "
            f"{without_ms} | {with_ms} | {without_cpu} | {with_cpu} | {_fan_out_cost(fan)} | "
            f"{pair_cell} | {pair_verdict} | "
            f"{fan.writes.cpu.watchers:.2f} | {fan.writes.cpu.postgres:.2f} | "
            f"{fan.writes.cpu.machine_busy:.0%} | {verdict} |"
        )
    return lines


def _per_cpu(result: LoadResult) -> float:
    return result.rate / result.server_cpu if result.server_cpu > 0 else 0.0


def _load_cells(result: LoadResult) -> tuple[str, str, str]:
    return (
        f"{result.rate:,.0f}",
        spread_cell(result.percentile(50), result.percentile(99)),
        f"{result.server_cpu:.2f}",
    )


def _write_load_table(results: list[WatchResult]) -> list[str]:
    lines = [
        "| backend | window | writes/s | p50 / p99 ms | errors | × without | §9 goal | "
        "server CPU | writes per server CPU-s | × without per CPU | generator CPU | "
        "watcher process CPU | postgres CPU | machine busy |",
        "|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        load = r.writes
        assert load is not None
        backend = BACKEND_TITLES.get(r.backend, r.backend)
        windows: list[tuple[str, LoadResult, float | None, str]] = []
        if load.without:
            windows.append(("no watchers (start)", load.without[0], None, "—"))
        if load.with_watchers is not None:
            verdict = goal_verdict(_watch_goal(r, "watch_writes"), _write_load_met(r))
            title = f"{load.watchers} watchers, unfiltered"
            windows.append((title, load.with_watchers, load.watcher_cpu, verdict))
        if load.filtered is not None:
            verdict = goal_verdict(_watch_goal(r, "watch_filtered"), _filtered_met(r))
            title = f"{load.filtered.watchers} watchers, each on its own entity"
            windows.append((title, load.filtered.result, load.filtered.watcher_cpu, verdict))
        windows += [("no watchers (end)", w, None, "—") for w in load.without[1:]]
        for title, result, watcher_cpu, verdict in windows:
            rate, spread, server = _load_cells(result)
            judged = watcher_cpu is not None
            with_ratio = load.ratio_of(result)
            ratio = f"{with_ratio:.2f}" if judged and with_ratio is not None else "—"
            per_cpu = _per_cpu(result)
            cpu_ratio = "—"
            baseline = [_per_cpu(w) for w in load.without]
            if judged and all(baseline):
                cpu_ratio = f"{per_cpu / (sum(baseline) / len(baseline)):.2f}"
            lines.append(
                f"| {backend} | {title} | {rate} | {spread} | {result.errors} | {ratio} | "
                f"{verdict} | {server} | {per_cpu:,.0f} | {cpu_ratio} | {result.client_cpu:.2f} | "
                f"{'—' if watcher_cpu is None else f'{watcher_cpu:.2f}'} | "
                f"{result.postgres_cpu:.2f} | {result.machine_busy:.0%} |"
            )
    return lines


def _watch_delivery_lines(results: list[WatchResult]) -> list[str]:
    lines = []
    for r in results:
        load = r.writes
        if load is None:
            continue
        if load.filtered is not None:
            window = load.filtered
            expected = "?" if window.expected is None else f"{window.expected:,}"
            lines.append(
                f"* {BACKEND_TITLES.get(r.backend, r.backend)}, the PUT window with filtered "
                f"watchers: {window.received:,} events received of {expected} written (each "
                f"write reaches one watcher), {window.catch_up:.2f} s after the load ended; "
                f"reads out of order or repeated {window.irregular:,}."
            )
        if load.with_watchers is None:
            continue
        lines.append(
            f"* {BACKEND_TITLES.get(r.backend, r.backend)}, the PUT window with watchers: "
            f"{load.expected_each:,} events for each watcher (opening probe to closing probe); "
            f"{load.reached} / {load.watchers} watchers got the closing probe, "
            f"{load.catch_up:.2f} s after the load ended; lost {load.lost:,}, extra "
            f"{load.extra:,}, reads with a gap or repeat {load.irregular:,}."
        )
    return lines


def _watch_behaviour_lines(results: list[WatchResult]) -> list[str]:
    lines = []
    for r in results:
        backend = BACKEND_TITLES.get(r.backend, r.backend)
        line = (
            f"* {backend}: {r.opened} streams opened in {r.open_seconds:.1f} s, {r.refused} failed"
            + (f" (first: `{r.refused_sample[:200]}`)" if r.refused_sample else "")
            + f"; {r.client_resets} `event: reset` received, {r.client_closed} streams closed by "
            "the server while held"
            + (f" (first reset: `{r.reset_sample[:200]}`)" if r.reset_sample else "")
            + ". /metrics: "
            + "; ".join(
                f"{m.moment}: {m.clients:g} clients, cut-offs "
                + (", ".join(f"{k} {v}" for k, v in sorted(m.cut_off.items())) or "none")
                for m in r.metrics
            )
            + f". {r.open_files}."
        )
        lines.append(line)
        if r.log_lines:
            events = ", ".join(f"`{event}` × {count}" for event, count in r.log_events.items())
            lines.append(
                f"* {backend}: the server logged {r.log_lines} lines: {events}. First of each:"
            )
            lines += [f"  * `{sample.replace('`', '')}`" for sample in r.log_samples]
        else:
            lines.append(f"* {backend}: the server logged nothing (LOG_LEVEL=warning).")
        lines += [f"* {backend}: {note}" for note in r.notes]
    return lines


def _hostile_table(results: list[WatchResult]) -> list[str]:
    lines = [
        "| backend | watchers | backlog | server RSS before MB | peak MB | growth MB | "
        "all closed by the server | after s | too_slow cut-offs | health p50 / p99 / max ms | "
        "health failures | §9 goal |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|---|",
    ]
    for r in results:
        hostile = r.hostile
        assert hostile is not None
        verdict = goal_verdict(_watch_goal(r, "watch_hostile"), _hostile_met(r))
        lines.append(
            f"| {BACKEND_TITLES.get(r.backend, r.backend)} | {hostile.watchers} | "
            f"{hostile.backlog_events:,} events, {hostile.backlog_bytes / 1e6:.0f} MB | "
            f"{hostile.rss_before / 2**20:.0f} | {hostile.rss_peak / 2**20:.0f} | "
            f"{hostile.growth_mb:.0f} | {'yes' if hostile.closed else '**no**'} | "
            f"{hostile.closed_after:.1f} | {hostile.cut_off} | {p50_p99_max(hostile.health)} | "
            f"{hostile.health_failures} | {verdict} |"
        )
    return lines


def watch_section(run: BenchRun) -> list[str]:
    if not run.watch:
        return []
    options = run.options.watch
    measured = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"{WATCH_HEADING} (1 worker only)",
        "",
        f"Measured by `{run.options.command}` ({measured}). One server (`serve`, one uvicorn "
        "worker, every setting at its default: WATCH_MAX_CLIENTS 1000 per key, "
        "WATCH_MAX_BUFFER_BYTES 1 MiB, WATCH_MEMORY_BUDGET 64 MiB, WATCH_HEARTBEAT 15 s) per "
        f"backend; {options.watchers} streams on `GET /api/v1/watch` (no filter: every "
        "change reaches every stream), or one per seeded state on "
        "`GET /api/v1/states/user/watch?entityId=<its id>`, all opened at "
        "once from now on, held by one *watcher process* (`python -m bench.watchers`, asyncio on "
        "uvloop, raw connections, each `id:` line found by a byte search), apart from the "
        "writers. Arrival is the watcher process's read of the bytes; both sides read "
        "CLOCK_MONOTONIC.",
        "",
    ]
    fan = [r for r in run.watch if r.fan_out is not None]
    if fan:
        out += [
            "### Change → event at every watcher",
            "",
            *_fan_out_table(fan),
            "",
            f"The bench process POSTs a new state every 1/{options.rate:g} s whatever the earlier "
            f"writes do (open loop): {options.warmup_changes} unmeasured, then "
            f"{options.changes} measured, after one probe change every stream must get. *event − "
            "response* over every (watcher, change) pair is the §9 figure (negative when the "
            "event beats the write's response); *last watcher* is, per change, its arrival at "
            "the last stream to get it. *lost*: (watcher, change) pairs never received, "
            "30 s after the last write (the goal also needs 0). *without watchers*: "
            "the same schedule on the same server before any stream opened. CPU in cores over "
            "the measured writes; *fan-out server CPU per change* = (server CPU with − without "
            "watchers) ÷ changes/s: what delivering one change to every watcher costs the "
            "server's one event loop, which also serves the writes; ÷ watchers, it is the "
            "*server CPU per (event, watcher)* of §9.",
            "",
        ]
    writes = [r for r in run.watch if r.writes is not None]
    if writes:
        out += [
            "### PUT writes per second with and without watchers",
            "",
            *_write_load_table(writes),
            "",
            f"The closed-loop PUT load of the request rows ({options.concurrency} connections, "
            f"{options.warmup:g} s warm-up then {options.duration:g} s measured, the generator "
            "process) without watchers, with every unfiltered stream connected (each "
            "receiving, and counting, every event), with one stream per seeded state (each "
            "receiving that state's changes: every write reaches one stream), and without "
            "again, on the same server; *× without* is to the mean of the two windows without "
            "(the §9 figure for the filtered streams); *× without per CPU* "
            "compares writes per second of server CPU instead, the steadier figure when "
            "other processes take CPU from the server.",
            "",
            *_watch_delivery_lines(writes),
            "",
        ]
    hostile = [r for r in run.watch if r.hostile is not None]
    if hostile:
        out += [
            "### Hostile clients: watchers that never read",
            "",
            *_hostile_table(hostile),
            "",
            "After the other watch rows, on the same server: 1,500 changes of about 60 KB "
            "each are written (atomic batches of 100), then 10 raw connections with a 4 KB "
            "receive buffer ask for everything after the revision before them "
            "(`GET /api/v1/watch?after=N`) and never read. Until the server has closed "
            "every one (it aborts a connection that has not drained for half of "
            "WATCH_HEARTBEAT), the runner samples the server's resident memory and asks "
            "`/health/liveness` every 50 ms; *growth* is the peak over what the server held "
            "just before the requests. Before the byte budgets, ten such clients took the "
            "server from 131 MB to 2.4 GB.",
            "",
        ]
    out += ["### What the service did", "", *_watch_behaviour_lines(run.watch), ""]
    return out
