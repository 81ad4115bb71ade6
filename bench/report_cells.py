"""Cells of REPORT.md's tables that every section writes the same way: milliseconds,
CPU µs per request, a §9 goal's verdict, a latency spread."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.scenarios import Goal
    from bench.watchers import Spread


def ms(value: float) -> str:
    if value != value:  # NaN: no successful request
        return "—"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def cpu_us(cores: float, per_second: float) -> str:
    """CPU µs per request (or delivery): cores ÷ rate. The steadier figure across
    hosts, since it does not depend on how much of a core the process got."""
    return "—" if per_second <= 0 else f"{cores / per_second * 1e6:,.0f}"


def goal_verdict(goal: Goal | None, met: bool | None) -> str:
    if goal is None or met is None:
        return "—"
    return f"{goal.text}: **{'met' if met else 'missed'}**"


def spread_cell(p50: float, p99: float, worst: float | None = None) -> str:
    cell = f"{ms(p50)} / {ms(p99)}"
    return cell if worst is None else f"{cell} / {ms(worst)}"


def p50_p99_max(spread: Spread) -> str:
    return spread_cell(spread.p50, spread.p99, spread.max)
