"""Render bench/REPORT.md: generated tables, plus a hand-written analysis section
that survives re-runs (kept between the ANALYSIS markers).

`render` is the report top to bottom, in the order REPORT.md shows it: the run and
its method, then each measured section from the module that writes it (its tables
beside the words that explain them: requests_report.py, webhooks_report.py,
watch_report.py, leases_report.py, stream.py, scale_report.py), the cache notes,
the before/after figures, which live here, and the analysis. `splice_sections`
writes the watch, leases and large-store sections alone into an existing report.
Cells every section writes alike are in report_cells.py; the machine, in host.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.host import load_average, machine_info
from bench.leases_report import LEASES_HEADING, leases_section
from bench.report_cells import ms
from bench.requests_report import find_measurement, measurement_met, request_sections
from bench.scale_report import SCALE_HEADING, scale_section
from bench.scenarios import (
    BACKEND_TITLES,
    DELIVERY_SCENARIOS,
    PROFILES,
    SCALE_SCENARIOS,
    Goal,
    ServerProfile,
    workers_label,
)
from bench.stream import report_section as stream_report_section
from bench.watch_report import WATCH_HEADING, watch_section
from bench.webhooks_report import throughput_met, webhook_section

if TYPE_CHECKING:
    from bench.results import BenchRun

__all__ = ["keep_analysis", "load_average", "machine_info", "render", "splice_sections"]
"""What bench/run.py uses: the report, and the machine it describes (bench/host.py)."""

ANALYSIS_START = "<!-- ANALYSIS:START (hand-written, kept when the report is regenerated) -->"
ANALYSIS_END = "<!-- ANALYSIS:END -->"
SPLICED_HEADINGS = (WATCH_HEADING, LEASES_HEADING, SCALE_HEADING)
"""The sections `--splice` writes into an existing report, in report order."""
_ANALYSIS_PLACEHOLDER = "_No analysis written yet for this run._"

# The figures our issue (the §9 rework) was filed with: measured at review before
# the rework, 2026-11-28, one uvicorn worker. Fixed numbers, never regenerated;
# the report's "after" columns come from the run it reports (1 worker).
BEFORE: dict[str, dict[str, str]] = {
    "put": {"sqlite": "0.06×", "postgresql": "0.05×"},
    "create": {"sqlite": "0.07×", "postgresql": "0.05×"},
    "list": {"sqlite": "0.05×", "postgresql": "0.07×"},
    "get": {"sqlite": "0.29×", "postgresql": "0.16×"},
    "get_cached": {"sqlite": "0.27×", "postgresql": "0.18×"},
    "deliveries": {"sqlite": "0.07×", "postgresql": "0.05×"},
    "batch": {"sqlite": "114–144 ms", "postgresql": "114–144 ms"},
}
BEFORE_DATE = "2026-11-28"


def splice_sections(rendered: str, previous_path: Path) -> tuple[str, list[str]]:
    """The report at `previous_path` with each of its `SPLICED_HEADINGS` sections
    that `rendered` has replaced by the new one (or added before *Cache and
    notes*), every other section kept; and the headings written."""
    found = [(h, new) for h in SPLICED_HEADINGS if (new := _section(rendered, h)) is not None]
    written = [heading.removeprefix("## ") for heading, _ in found]
    try:
        text = previous_path.read_text()
    except OSError:
        return rendered, written
    for heading, section in found:
        text = _splice(text, heading, section)
    return text, written


def _splice(previous: str, heading: str, new: str) -> str:
    old = _section(previous, heading)
    if old is not None:
        return previous.replace(old, new, 1)
    for anchor in ("\n## Cache and notes", "\n## Analysis"):
        at = previous.find(anchor)
        if at >= 0:
            return previous[: at + 1] + new + previous[at + 1 :]
    return previous.rstrip("\n") + "\n\n" + new


def _section(text: str, heading: str) -> str | None:
    """From the `heading` line to the next `## ` heading (not included)."""
    start = text.find("\n" + heading)
    if start < 0:
        return None
    start += 1
    end = text.find("\n## ", start)
    return text[start : end + 1] if end >= 0 else text[start:]


def _judged(text: str, met: bool | None) -> str:
    if met is None:
        return text
    return f"{text} {'met' if met else '**missed**'}"


def _ratio_after(run: BenchRun, backend: str, key: str) -> str:
    m = find_measurement(run, backend, key)
    if m is None or m.ratio is None:
        return "not run"
    return _judged(f"{m.ratio:.2f}×", measurement_met(m))


def _batch_after(run: BenchRun, backend: str) -> str:
    cells = []
    for key, what in (("batch_create", "new"), ("batch_update", "transitions")):
        m = find_measurement(run, backend, key)
        if m is not None and m.result.latencies_ms:
            cells.append(_judged(f"{ms(m.result.percentile(50))} ms ({what})", measurement_met(m)))
    return ", ".join(cells) or "not run"


def _deliveries_after(run: BenchRun, backend: str) -> str:
    cells = []
    for t in run.delivery_rates:
        if t.backend == backend and t.ratio is not None:
            subscriptions = t.scenario.subscriptions
            label = f"{subscriptions} subscription{'s' if subscriptions > 1 else ''}"
            cells.append(_judged(f"{t.ratio:.2f}× ({label})", throughput_met(t)))
    return ", ".join(cells) or "not run"


def _goal_texts(goals: tuple[Goal, ...], backends: tuple[str, ...]) -> str:
    texts = (g.text for g in goals if any(g.applies_to(b) for b in backends))
    return "; ".join(dict.fromkeys(texts)) or "—"


def _scenario_goals(key: str) -> tuple[Goal, ...]:
    for profile in PROFILES:
        for scenario in profile.scenarios:
            if scenario.key == key:
                return scenario.goals
    for delivery in DELIVERY_SCENARIOS:
        if delivery.key == key:
            return delivery.goals
    return ()


def _before_after_section(run: BenchRun) -> list[str]:
    """The figures the issue was filed with (`BEFORE`) against this run's, 1 worker."""
    backends = run.options.backends
    rows: list[tuple[str, str, str, Callable[[str], str]]] = [
        ("PUT transition", "put", "put", lambda b: _ratio_after(run, b, "put")),
        ("POST create", "create", "create", lambda b: _ratio_after(run, b, "create")),
        (
            "GET list ?status=…&limit=50",
            "list",
            "list",
            lambda b: _ratio_after(run, b, "list"),
        ),
        ("GET one, no cache", "get", "get", lambda b: _ratio_after(run, b, "get")),
        (
            "GET one, cache hit",
            "get_cached",
            "get_cached",
            lambda b: _ratio_after(run, b, "get_cached"),
        ),
        (
            "deliveries/s of one worker vs raw POST",
            "deliveries",
            "deliveries",
            lambda b: _deliveries_after(run, b),
        ),
        (
            "atomic batch of 1000, p50",
            "batch",
            "batch_create",
            lambda b: _batch_after(run, b),
        ),
    ]
    measured = [[after(backend) for backend in backends] for _, _, _, after in rows]
    if all(cell == "not run" for cells in measured for cell in cells):
        return []
    header = "| path | " + " | ".join(
        f"{BACKEND_TITLES.get(b, b)} before | {BACKEND_TITLES.get(b, b)} after" for b in backends
    )
    lines = [
        f"## Before / after ({workers_label(1)})",
        "",
        f"*Before*: the figures the issue was filed with, measured at review before the "
        f"rework ({BEFORE_DATE}, fixed numbers in `bench/report.py`). *After*: this run, "
        "one uvicorn worker (the sections above with 1 worker); ratios are × ceiling, "
        "deliveries × raw POST rate, batches p50 per 1000-item batch.",
        "",
        header + " | §9 goal |",
        "|---|" + "--:|--:|" * len(backends) + "---|",
    ]
    for (title, before_key, goal_key, _), cells in zip(rows, measured, strict=True):
        columns = " | ".join(
            f"{BEFORE[before_key].get(backend, '—')} | {cell}"
            for backend, cell in zip(backends, cells, strict=True)
        )
        lines.append(
            f"| {title} | {columns} | {_goal_texts(_scenario_goals(goal_key), backends)} |"
        )
    lines += [
        "",
        "*GET one, cache hit*: before, a hit came from the local Redis tier; after, from the "
        "near cache (in-process; the Redis tier behind it). The Redis hit without the near "
        "cache is the informational *Redis hit, near cache off* section.",
        "",
    ]
    return lines


def _profile_settings(profile: ServerProfile) -> str:
    settings = {k: v for k, v in profile.settings.items() if k != "REDIS_LOCAL_HOST"}
    if profile.needs_redis:
        settings["REDIS_LOCAL_PORT"] = "(a private redis-server)"
    if profile.needs_admin_service:
        settings["EXTERNAL_DB_URL"] = "(the reference Admin Service, its own process)"
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def render(run: BenchRun, machine: dict[str, str]) -> str:
    options = run.options
    workers = ", ".join(str(n) for n in options.workers)
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
        f"* Method: the real server (`potok-state serve --workers N`, N = {workers}; N > 1 is "
        "N uvicorn processes on one port; LOG_LEVEL=warning, throttling off, the profile's "
        "settings below, every other setting at its default, e.g. SQLITE_SYNCHRONOUS=full) "
        "as a subprocess; the load generator is one "
        f"separate process (aiohttp, {options.concurrency} keep-alive connections, "
        f"{options.warmup:g} s warm-up then {options.duration:g} s measured per scenario); "
        f"batches are sent one at a time, {options.batches} per scenario after one warm-up "
        f"batch. {options.seed} `user` states are seeded before GET/PUT; PUTs cycle "
        "online/offline/busy with new metadata, so each is a valid change.",
        "* Server profiles (each started once per backend and worker count, with its own "
        "ceiling): "
        + "; ".join(f"*{p.title}*: {_profile_settings(p)}" for p in PROFILES)
        + ". Batches, heartbeats, webhook delivery, watch streams and lease lapses run "
        "with 1 worker only. Before "
        "the rows of a Redis profile, every seeded state is read once (with N workers 2N "
        "times, each request on a new connection, since every worker has its own near "
        "cache), so the cache-hit rows measure hits, not first reads.",
        _ratio_method(options.probe) + " A 2-worker row is a ratio to "
        "the 2-worker ceiling. *× ceiling per CPU* compares requests per second of server "
        "CPU instead (req/s ÷ server CPU): it estimates the ratio a server with a core to "
        "itself would show, and is the steadier figure when the machine is overloaded "
        "(it ignores time the server spends waiting, so it flatters I/O-bound paths).",
        "* CPU columns are in cores (1.00 = one core fully busy) over the measured window; "
        "*server CPU* sums the server's whole process tree (the uvicorn parent and its "
        "worker processes), so it can reach N with N workers; *postgres CPU* sums every "
        "`postgres` process on the machine, *machine busy* is all "
        "cores, everything included — both also count other users of this shared, noisy "
        "machine (other engineers run test suites on it), so compare within a run, not "
        "across runs.",
        "",
    ]
    out += request_sections(run)
    out += webhook_section(run)
    out += watch_section(run)
    out += leases_section(run)
    out += stream_report_section(run.stream, options.stream)
    out += scale_section(run.scale, SCALE_SCENARIOS)
    out += ["## Cache and notes", ""]
    for label, stats in run.redis.items():
        line = (
            f"* {label}: private redis-server held {stats['keys']} keys at the end, "
            f"{stats['hits']:,} keyspace hits, {stats['misses']:,} misses."
        )
        if "service hit" in stats:
            line += (
                " The service's local-tier lookups during the measured scenarios "
                "(`potok_cache_requests_total`, warm-ups included): "
                + ", ".join(
                    f"{stats[f'service {result}']:,} {result}"
                    for result in ("hit", "miss", "error", "skipped")
                )
                + " (error: a command failed or exceeded CACHE_TIMEOUT; skipped: the "
                "tier's circuit was open)."
            )
        out.append(line)
    out += [f"* {note}" for note in run.notes]
    if not run.redis and not run.notes:
        out.append("* The Redis profiles were not selected in this run.")
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
            f"* {m.backend} / {workers_label(m.workers)} / {m.scenario.key}: "
            f"{m.result.error_kinds}; first: `{m.result.error_sample}`"
            for m in errors
        ]
    out.append("")
    out += _before_after_section(run)
    out += ["## Analysis", "", ANALYSIS_START, _ANALYSIS_PLACEHOLDER, ANALYSIS_END, ""]
    return "\n".join(out)


def _ratio_method(probe: float) -> str:
    if probe <= 0:
        return (
            "* Ratios (× ceiling) divide by the mean of the two ceiling rows of the same "
            "server (same backend, profile and worker count, measured first and last), so "
            "drift during the run shows as those two rows differing from 1.00."
        )
    return (
        f"* Ratios (× ceiling) divide by the ceiling of the same server measured just "
        f"before and just after the row: a {probe:g} s ceiling probe runs before every "
        "row (not shown), and a row's ceiling is the mean of its own probe and the next "
        "row's (the section's closing ceiling row for the last), because the host's "
        "speed drifts within a section. A relative goal (the schema PUT) compares the two "
        "rows' ratios. The ceiling rows themselves are shown against the mean of the two, "
        "so their distance from 1.00 is the drift across the section."
    )


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
