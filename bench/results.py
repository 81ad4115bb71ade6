"""What a bench run measured, as bench/run.py collects it and bench/report.py
writes it: the run's options, each load measurement with its ceiling, and the
results of every section."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.leases import LapseResult, LeaseOptions
from bench.load import LoadResult
from bench.scale import ScaleOptions, ScaleResult
from bench.scenarios import Scenario
from bench.stream import StreamOptions, StreamResults
from bench.watch import WatchOptions
from bench.watch_results import WatchResult
from bench.webhooks import DeliveryOptions, LatencyResult, ThroughputResult


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    duration: float
    warmup: float
    concurrency: int
    batches: int
    seed: int
    cache: str
    only: frozenset[str]
    workers: tuple[int, ...]
    """`serve --workers N` for each N; batches and webhook delivery run with N = 1 only."""
    probe: float
    """Measured seconds of the short ceiling run before each row (0: none; every
    row is then judged against the mean of its section's two ceiling rows)."""
    profile: str | None
    report_path: Path | None
    json_path: Path | None
    command: str
    deliveries: DeliveryOptions
    watch: WatchOptions
    leases: LeaseOptions
    stream: StreamOptions
    scale: ScaleOptions | None = None
    """The large-store section, when selected (a full run, or `--only scale`)."""
    splice: bool = False
    """Write only the watch, leases and large-store sections into `report_path`,
    keeping the rest."""


@dataclass
class Measurement:
    backend: str
    workers: int
    profile: str
    scenario: Scenario
    result: LoadResult
    ceiling_rate: float = 0.0
    """The ceiling this row is judged against: the mean of the ceiling probes
    measured just before and just after it, or of its section's ceiling rows."""
    ceiling_per_cpu: float = 0.0
    reference: Measurement | None = None
    """The row a relative goal names (`Goal.relative_to`)."""
    one_worker_ratio: float | None = None
    """With N > 1 workers: the same row's ratio with one worker in this run."""

    @property
    def ratio(self) -> float | None:
        if self.scenario.sequential or self.ceiling_rate <= 0:
            return None
        return self.result.rate / self.ceiling_rate

    @property
    def relative(self) -> float | None:
        """This row's ratio against that of the row the goal names: each against
        its own ceiling, so a host that slowed between the two does not count."""
        mine, theirs = self.ratio, None if self.reference is None else self.reference.ratio
        return mine / theirs if mine is not None and theirs else None

    @property
    def relative_per_cpu(self) -> float | None:
        mine = self.cpu_ratio
        theirs = None if self.reference is None else self.reference.cpu_ratio
        return mine / theirs if mine is not None and theirs else None

    @property
    def per_cpu(self) -> float:
        """Requests per second of server CPU: what one saturated core would serve."""
        cpu = self.result.server_cpu
        return self.result.rate / cpu if cpu > 0 else 0.0

    @property
    def cpu_ratio(self) -> float | None:
        """`per_cpu` against the ceiling's: a ratio that holds up better than req/s
        when other processes take CPU from the server."""
        if self.scenario.sequential or self.ceiling_per_cpu <= 0:
            return None
        return self.per_cpu / self.ceiling_per_cpu


@dataclass
class BenchRun:
    options: Options
    started: float = field(default_factory=time.time)
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    redis: dict[str, dict[str, int]] = field(default_factory=dict)
    """Private redis-server stats at the end of each Redis profile, by section label."""
    delivery_latencies: list[LatencyResult] = field(default_factory=list)
    delivery_rates: list[ThroughputResult] = field(default_factory=list)
    watch: list[WatchResult] = field(default_factory=list)
    leases: list[LapseResult] = field(default_factory=list)
    stream: StreamResults = field(default_factory=lambda: StreamResults([], []))
    scale: list[ScaleResult] = field(default_factory=list)
