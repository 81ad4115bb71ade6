"""What the watch bench measured (bench/watch.py), as the report reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.hostile import HostileClients
from bench.load import LoadResult
from bench.scenarios import WatchScenario
from bench.watchers import Spread


@dataclass(frozen=True)
class CpuUse:
    """Cores (1.00 = one core busy) over one window."""

    server: float
    """The server's process tree."""
    watchers: float
    """The watcher process (0 when none runs)."""
    writer: float
    """The process that wrote: this one (steady rate) or the generator (closed loop)."""
    postgres: float
    machine_busy: float


@dataclass
class SteadyWrites:
    """Open-loop writes at a fixed rate, the writer's side."""

    changes: int
    errors: int
    rate: float
    """Changes per second actually started (the schedule's, unless this process lagged)."""
    write_ms: Spread
    cpu: CpuUse
    error_sample: str = ""


@dataclass
class FanOut:
    """Change → event at every watcher, at a steady write rate."""

    watchers: int
    writes: SteadyWrites
    """With the watchers connected."""
    baseline: SteadyWrites | None
    """The same schedule with no watcher connected (same server, just before)."""
    after_response: Spread
    """Arrival − the write's response, every (watcher, change) pair."""
    after_request: Spread
    last_watcher: Spread
    """Per change: its arrival at the last watcher to get it − the write's response."""
    lost: int
    """(watcher, change) pairs written but never received."""
    duplicates: int
    out_of_order: int
    complete: int
    """Watchers that received every measured change."""
    events_min: int
    events_max: int
    """Fewest / most measured changes one watcher received."""
    settled: bool
    """Every open stream reached the last change within the settle time."""


@dataclass
class WriteLoad:
    """Closed-loop PUT throughput, without watchers (before and after) and with."""

    without: list[LoadResult]
    with_watchers: LoadResult | None = None
    watchers: int = 0
    """Streams open when the window with watchers started."""
    watcher_cpu: float = 0.0
    """The watcher process, cores, over the measured window with watchers."""
    expected_each: int = 0
    """Revisions every watcher should have received over that window (probe to probe)."""
    lost: int = 0
    """Events missing at the watchers (expected − received, summed), settle included."""
    extra: int = 0
    """Events received beyond those expected (duplicates)."""
    irregular: int = 0
    """Reads whose ids were not the next revisions in order (gaps, repeats)."""
    reached: int = 0
    """Streams that got the closing probe."""
    catch_up: float = float("nan")
    """Seconds from the end of the load to the closing probe's arrival at every stream."""

    filtered: FilteredWindow | None = None
    """The same load with every watcher filtered to one entity of its own."""

    @property
    def without_rate(self) -> float:
        return sum(r.rate for r in self.without) / len(self.without) if self.without else 0.0

    @property
    def ratio(self) -> float | None:
        return self.ratio_of(self.with_watchers)

    def ratio_of(self, result: LoadResult | None) -> float | None:
        if result is None or self.without_rate <= 0:
            return None
        return result.rate / self.without_rate


@dataclass
class FilteredWindow:
    """The closed-loop PUT load while each watcher watches one seeded state
    (`GET /states/user/watch?entityId=<its id>`): every write reaches one watcher."""

    result: LoadResult
    watchers: int
    watcher_cpu: float
    expected: int | None
    """Events the watchers should have received together: every write between the
    two marks, when every seeded state has its watcher (None otherwise)."""
    received: int
    irregular: int
    """Reads whose ids went backwards or repeated."""
    catch_up: float
    """Seconds from the end of the load until the watchers had every write."""

    def to_json(self) -> dict[str, Any]:
        return {
            "watchers": self.watchers,
            "watcher_cpu": self.watcher_cpu,
            "expected": self.expected,
            "received": self.received,
            "irregular": self.irregular,
            "catch_up": self.catch_up,
        }


@dataclass(frozen=True)
class WatchMetrics:
    """`potok_watch_clients` and `potok_watch_cut_off_total` by reason, from /metrics."""

    moment: str
    clients: float
    cut_off: dict[str, int]


@dataclass
class WatchResult:
    backend: str
    scenarios: tuple[WatchScenario, ...]
    open_files: str = ""
    opened: int = 0
    refused: int = 0
    refused_sample: str = ""
    open_seconds: float = 0.0
    fan_out: FanOut | None = None
    writes: WriteLoad | None = None
    hostile: HostileClients | None = None
    metrics: list[WatchMetrics] = field(default_factory=list)
    client_resets: int = 0
    """`event: reset` frames the watchers received."""
    client_closed: int = 0
    """Streams the server closed while the bench still held them."""
    reset_sample: str = ""
    log_lines: int = 0
    log_events: dict[str, int] = field(default_factory=dict)
    log_samples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def cut_offs(self) -> dict[str, int]:
        """Streams the service ended, by reason, over the whole run."""
        return self.metrics[-1].cut_off if self.metrics else {}

    def to_json(self) -> dict[str, Any]:
        def load(result: LoadResult | None) -> dict[str, Any] | None:
            if result is None:
                return None
            return {
                "rate": result.rate,
                "p50_ms": result.percentile(50),
                "p99_ms": result.percentile(99),
                "errors": result.errors,
                "server_cpu": result.server_cpu,
                "generator_cpu": result.client_cpu,
                "postgres_cpu": result.postgres_cpu,
                "machine_busy": result.machine_busy,
            }

        payload: dict[str, Any] = {
            "backend": self.backend,
            "scenarios": [s.key for s in self.scenarios],
            "open_files": self.open_files,
            "opened": self.opened,
            "refused": self.refused,
            "open_seconds": self.open_seconds,
            "metrics": [vars(m) for m in self.metrics],
            "client_resets": self.client_resets,
            "client_closed": self.client_closed,
            "log_lines": self.log_lines,
            "log_events": self.log_events,
            "log_samples": self.log_samples,
            "notes": self.notes,
        }
        if self.fan_out is not None:
            fan = self.fan_out
            payload["fan_out"] = {
                **{
                    name: getattr(fan, name)
                    for name in (
                        "watchers",
                        "lost",
                        "duplicates",
                        "out_of_order",
                        "complete",
                        "events_min",
                        "events_max",
                        "settled",
                    )
                },
                "after_response_ms": fan.after_response.to_json(),
                "after_request_ms": fan.after_request.to_json(),
                "last_watcher_ms": fan.last_watcher.to_json(),
                "writes": _steady_json(fan.writes),
                "baseline": None if fan.baseline is None else _steady_json(fan.baseline),
            }
        if self.writes is not None:
            w = self.writes
            payload["writes"] = {
                "without": [load(r) for r in w.without],
                "with_watchers": load(w.with_watchers),
                "ratio": w.ratio,
                "watchers": w.watchers,
                "watcher_cpu": w.watcher_cpu,
                "expected_each": w.expected_each,
                "lost": w.lost,
                "extra": w.extra,
                "irregular": w.irregular,
                "reached": w.reached,
                "catch_up": w.catch_up,
                "filtered": None
                if w.filtered is None
                else {
                    **load(w.filtered.result),  # type: ignore[dict-item]
                    **w.filtered.to_json(),
                    "ratio": w.ratio_of(w.filtered.result),
                },
            }
        if self.hostile is not None:
            payload["hostile"] = self.hostile.to_json()
        return payload


def _steady_json(writes: SteadyWrites) -> dict[str, Any]:
    return {
        "changes": writes.changes,
        "errors": writes.errors,
        "rate": writes.rate,
        "write_ms": writes.write_ms.to_json(),
        "cpu": vars(writes.cpu),
    }
