"""Watch stream figures of bench/README.md, against the real service (1 uvicorn worker).

* change → event: `--watchers` (1000) streams on `GET /api/v1/watch` are held by
  a *watcher process* of their own (`python -m bench.watchers`, driven by JSON lines
  on its stdin); this process writes changes at a fixed rate (open loop, a POST
  with a new entity id each) and notes each write's request start, response and
  revision; the watcher process notes when each revision reaches each stream.
  Latency = arrival − the write's response (and − its start), for every (watcher,
  change) pair. Both processes read CLOCK_MONOTONIC (`time.monotonic`), one clock
  for the whole machine.
* writes/s with and without watchers: the closed-loop PUT load of bench/load.py
  (the generator process), without watchers, with every watcher connected (each
  receiving every event, only counted), and without again; the ratio is to the
  mean of the two runs without.

All on one server, with its settings at their defaults (WATCH_MAX_CLIENTS 1000
per key, WATCH_MAX_BUFFER_BYTES 1 MiB a stream). The watcher process parses the streams
cheaply: the chunked HTTP body is not decoded; every `id:` line (always after a
newline: the previous frame's, or a chunk-size line's) is found by a search.

One file on purpose: the writer side and the watcher process (`python -m
bench.watch`) speak one JSON-lines protocol, kept in one place so the two cannot
drift apart.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bench.hostile import (
    BACKLOG_EVENTS,
    EVENT_PADDING,
    SILENT_WATCHERS,
    measure_hostile,
)
from bench.load import (
    SEED_ENTITY,
    LoadResult,
    LoadSpec,
    RequestKind,
    Workload,
    drive,
    machine_ticks,
    postgres_cpu_seconds,
    process_cpu_seconds,
    process_tree_cpu_seconds,
    seed_id,
)
from bench.scenarios import WatchScenario
from bench.server import BENCH_API_KEY, BenchSetupError, Service, running_service
from bench.watch_results import (
    CpuUse,
    FanOut,
    FilteredWindow,
    SteadyWrites,
    WatchMetrics,
    WatchResult,
    WriteLoad,
)
from bench.watchers import (
    OPEN_WITHIN,
    Spread,
    WatcherProcess,
    raise_open_files,
    watcher_process,
)

WATCH_PATH = "/api/v1/watch"
_API_HEADERS = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}
_PROBE_WITHIN = 30.0
"""Seconds for a probe change to reach every open stream."""
_SETTLE = 30.0
"""Seconds the streams get to catch up after the last write of a window."""
_CLOSE_WITHIN = 10.0
"""Seconds for the server's `potok_watch_clients` to drop to 0 once the streams close."""
_WRITER_CONNECTIONS = 256
"""The open-loop writer's connection limit: high enough that a slow server
does not turn the schedule into a queue in the client."""
_LOG_SAMPLES = 12


@dataclass(frozen=True)
class WatchOptions:
    watchers: int
    """Streams on `GET /api/v1/watch`, all with one API key."""
    rate: float
    """Changes per second, change → event."""
    changes: int
    """Changes measured, after `warmup_changes` unmeasured ones at the same rate."""
    warmup_changes: int
    duration: float
    """Measured seconds of each closed-loop PUT window."""
    warmup: float
    concurrency: int
    """Connections of the closed-loop PUT load."""
    seeded_ids: int


@dataclass(frozen=True)
class _CpuMark:
    at: float
    server: float
    watchers: float
    writer: float
    postgres: float
    busy: int
    total: int

    @classmethod
    def take(cls, server_pid: int, watcher_pid: int | None) -> _CpuMark:
        busy, total = machine_ticks()
        return cls(
            at=time.monotonic(),
            server=process_tree_cpu_seconds(server_pid),
            watchers=process_cpu_seconds(watcher_pid) if watcher_pid is not None else 0.0,
            writer=time.process_time(),
            postgres=postgres_cpu_seconds(),
            busy=busy,
            total=total,
        )

    def until(self, end: _CpuMark) -> CpuUse:
        wall = max(end.at - self.at, 1e-9)
        return CpuUse(
            server=max(0.0, end.server - self.server) / wall,
            watchers=max(0.0, end.watchers - self.watchers) / wall,
            writer=(end.writer - self.writer) / wall,
            postgres=max(0.0, end.postgres - self.postgres) / wall,
            machine_busy=(end.busy - self.busy) / (end.total - self.total)
            if end.total > self.total
            else 0.0,
        )


_CLIENTS = re.compile(rb"^potok_watch_clients ([0-9.e+-]+)$", re.M)
_CUT_OFF = re.compile(rb'^potok_watch_cut_off_total\{reason="(\w+)"\} ([0-9.e+]+)$', re.M)


async def watch_metrics(
    session: aiohttp.ClientSession, service: Service, moment: str
) -> WatchMetrics:
    async with session.get(f"{service.base_url}/metrics") as response:
        text = await response.read()
    clients = _CLIENTS.search(text)
    return WatchMetrics(
        moment=moment,
        clients=float(clients.group(1)) if clients else float("nan"),
        cut_off={reason.decode(): int(float(value)) for reason, value in _CUT_OFF.findall(text)},
    )


@dataclass(frozen=True)
class _Write:
    revision: int
    started: float
    responded: float


ProgressFn = Callable[[str], None]
SeedFn = Callable[[Service], Awaitable[None]]


class WatchBench:
    """One backend: one server, the watcher process, the writers."""

    def __init__(
        self,
        backend: str,
        service: Service,
        session: aiohttp.ClientSession,
        options: WatchOptions,
        pool: ProcessPoolExecutor,
        progress: ProgressFn,
    ) -> None:
        self.backend = backend
        self.service = service
        self.session = session
        self.options = options
        self.pool = pool
        self.progress = progress
        self.tag = uuid.uuid4().hex[:8]
        self._ids = self._new_ids()

    def _new_ids(self) -> Iterator[str]:
        index = 0
        while True:
            yield f"watch-{self.tag}-{index:07d}"
            index += 1

    async def create(self) -> _Write:
        """POST one new state; its revision and timing."""
        body = orjson.dumps({"entityId": next(self._ids), "status": "online"})
        url = f"{self.service.base_url}/api/v1/states/{SEED_ENTITY}"
        started = time.monotonic()
        async with self.session.post(url, data=body, headers=_API_HEADERS) as response:
            payload = await response.read()
            responded = time.monotonic()
            if response.status not in (200, 201):
                raise BenchSetupError(
                    f"POST {url}: HTTP {response.status}: {payload[:300].decode(errors='replace')}"
                )
        return _Write(int(orjson.loads(payload)["revision"]), started, responded)

    # -- change → event --------------------------------------------------------------

    async def steady(self, holder: WatcherProcess | None) -> tuple[SteadyWrites, list[_Write]]:
        """`warmup_changes` then `changes` POSTs started at the fixed rate (open
        loop); the measured writes, and their figures."""
        options = self.options
        total = options.warmup_changes + options.changes
        writes: list[_Write | None] = [None] * total
        errors: list[str] = []
        marks: list[_CpuMark] = []
        watcher_pid = holder.pid if holder is not None else None

        async def write(index: int) -> None:
            try:
                writes[index] = await self.create()
            except (BenchSetupError, aiohttp.ClientError, TimeoutError) as exc:
                errors.append(str(exc).splitlines()[0][:300])

        tasks: list[asyncio.Task[None]] = []
        t0 = measured_from = time.monotonic()
        for index in range(total):
            await asyncio.sleep(max(0.0, t0 + index / options.rate - time.monotonic()))
            if index == options.warmup_changes:
                marks.append(_CpuMark.take(self.service.pid, watcher_pid))
                measured_from = time.monotonic()
            tasks.append(asyncio.create_task(write(index)))
        started_span = time.monotonic() - measured_from
        await asyncio.gather(*tasks)
        marks.append(_CpuMark.take(self.service.pid, watcher_pid))
        measured = [w for w in writes[options.warmup_changes :] if w is not None]
        result = SteadyWrites(
            changes=len(measured),
            errors=len(errors),
            rate=(options.changes - 1) / started_span if started_span > 0 else options.rate,
            write_ms=Spread.of([(w.responded - w.started) * 1000 for w in measured]),
            cpu=marks[0].until(marks[1]),
            error_sample=errors[0] if errors else "",
        )
        return result, measured

    async def probe(self, holder: WatcherProcess, within: float = _PROBE_WITHIN) -> dict[str, Any]:
        """One change, waited for at every open stream; the wait's outcome and its revision."""
        write = await self.create()
        waited = await holder.call(
            "wait", reply_within=within + 30, revision=write.revision, within=within
        )
        waited["revision"] = write.revision
        waited["after_response"] = time.monotonic() - write.responded
        return waited

    async def fan_out(
        self, holder: WatcherProcess, opened: int, baseline: SteadyWrites | None
    ) -> FanOut:
        await holder.call("timing", on=True)
        probe = await self.probe(holder)
        if probe["reached"] < probe["open"]:
            self.progress(f"    the probe reached {probe['reached']}/{probe['open']} streams")
        writes, measured = await self.steady(holder)
        last = max((w.revision for w in measured), default=0)
        waited = await holder.call("wait", reply_within=_SETTLE + 30, revision=last, within=_SETTLE)
        timings = [[w.revision, w.started, w.responded] for w in measured]
        found = await holder.call("latency", reply_within=300, timings=timings)
        await holder.call("timing", on=False)
        return FanOut(
            watchers=opened,
            writes=writes,
            baseline=baseline,
            after_response=Spread.from_json(found["after_response"]),
            after_request=Spread.from_json(found["after_request"]),
            last_watcher=Spread.from_json(found["last_watcher"]),
            lost=found["lost"],
            duplicates=found["duplicates"],
            out_of_order=found["out_of_order"],
            complete=found["complete"],
            events_min=found["events_min"],
            events_max=found["events_max"],
            settled=waited["reached"] >= waited["open"],
        )

    # -- writes/s with and without watchers --------------------------------------------

    def _put_spec(self) -> LoadSpec:
        workload = Workload(
            kind=RequestKind.PUT,
            base_url=self.service.base_url,
            api_key=BENCH_API_KEY,
            seeded_ids=self.options.seeded_ids,
            tag=uuid.uuid4().hex[:8],
        )
        return LoadSpec(
            workload,
            self.service.pid,
            concurrency=self.options.concurrency,
            duration=self.options.duration,
            warmup=self.options.warmup,
        )

    async def closed_loop(self) -> LoadResult:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.pool, drive, self._put_spec())
        if self.service.process.poll() is not None:
            raise BenchSetupError(
                f"the service died under the PUT load:\n{self.service.log_tail()}"
            )
        return result

    async def closed_loop_filtered(self, holder: WatcherProcess, watchers: int) -> FilteredWindow:
        """The PUT load with every stream watching one seeded state; then the streams
        must have every write (each reaches exactly one of them)."""
        before = (await self.create()).revision  # a new state: no stream sees it
        await holder.call("mark")

        async def watcher_cpu() -> float:
            await asyncio.sleep(self.options.warmup)
            start, at = process_cpu_seconds(holder.pid), time.monotonic()
            await asyncio.sleep(self.options.duration)
            return (process_cpu_seconds(holder.pid) - start) / (time.monotonic() - at)

        sampler = asyncio.create_task(watcher_cpu())
        result = await self.closed_loop()
        cpu = await sampler
        ended = time.monotonic()
        after = (await self.create()).revision
        expected = after - before - 1 if watchers >= self.options.seeded_ids else None
        deadline = ended + _SETTLE
        while True:
            got = await holder.call("received")
            if (expected is not None and got["received"] >= expected) or (
                time.monotonic() >= deadline
            ):
                break
            await asyncio.sleep(0.05)
        return FilteredWindow(
            result=result,
            watchers=watchers,
            watcher_cpu=cpu,
            expected=expected,
            received=got["received"],
            irregular=got["irregular"],
            catch_up=time.monotonic() - ended,
        )

    async def closed_loop_watched(self, holder: WatcherProcess, load: WriteLoad) -> None:
        """The PUT load with every stream open and counting; then every stream must
        catch up with a closing probe."""
        before = await self.probe(holder)
        await holder.call("mark")
        load.watchers = before["open"]

        async def watcher_cpu() -> float:
            # The generator's measured window starts after its warm-up.
            await asyncio.sleep(self.options.warmup)
            start, at = process_cpu_seconds(holder.pid), time.monotonic()
            await asyncio.sleep(self.options.duration)
            return (process_cpu_seconds(holder.pid) - start) / (time.monotonic() - at)

        sampler = asyncio.create_task(watcher_cpu())
        load.with_watchers = await self.closed_loop()
        load.watcher_cpu = await sampler
        ended = time.monotonic()
        after = await self.probe(holder, within=_SETTLE)
        load.catch_up = time.monotonic() - ended
        tally = await holder.call("tally", start=before["revision"], target=after["revision"])
        load.expected_each = tally["expected_each"]
        load.lost = tally["lost"]
        load.extra = tally["extra"]
        load.irregular = tally["irregular"]
        load.reached = tally["reached"]


def _progress_steady(progress: ProgressFn, label: str, writes: SteadyWrites) -> None:
    progress(
        f"    {label}: {writes.changes} changes at {writes.rate:.0f}/s, write p50 "
        f"{writes.write_ms.p50:.1f} ms p99 {writes.write_ms.p99:.1f} ms, errors {writes.errors}, "
        f"server CPU {writes.cpu.server:.2f}"
    )


def _progress_load(progress: ProgressFn, label: str, result: LoadResult) -> None:
    progress(
        f"    {label}: {result.rate:8.1f} writes/s  p50 {result.percentile(50):7.2f} ms  "
        f"p99 {result.percentile(99):7.2f} ms  errors {result.errors}  "
        f"server CPU {result.server_cpu:.2f}  generator CPU {result.client_cpu:.2f}"
    )


_LOG_EVENT = re.compile(r'"event":\s*"([^"]+)"')


def _read_log(result: WatchResult, log_path: Path) -> None:
    """What the server logged (LOG_LEVEL=warning: anything is worth a look)."""
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line]
    except OSError:
        return
    events: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for line in lines:
        found = _LOG_EVENT.search(line)
        event = found.group(1) if found else line[:80]
        events[event] += 1
        samples.setdefault(event, line[:400])
    result.log_lines = len(lines)
    result.log_events = dict(events.most_common())
    result.log_samples = list(samples.values())[:_LOG_SAMPLES]


async def measure(
    backend: str,
    database_url: str,
    workdir: Path,
    scenarios: list[WatchScenario],
    options: WatchOptions,
    pool: ProcessPoolExecutor,
    seed: SeedFn,
    progress: ProgressFn,
) -> WatchResult:
    """The selected watch figures on one backend (its database already migrated),
    in this order: the PUT load without watchers; the steady schedule without
    watchers; the unfiltered watchers connect; change → event at the same schedule;
    the PUT load with them; they leave; the filtered watchers connect; the PUT load
    with them; they leave; the PUT load without watchers again; the hostile clients
    (last: they leave a 90 MB backlog behind)."""
    keys = {s.key for s in scenarios}
    latency = bool(keys & {"watch_latency", "watch_cpu"})
    unfiltered_load, filtered = "watch_writes" in keys, "watch_filtered" in keys
    result = WatchResult(backend, tuple(scenarios))
    # Children inherit it: the server's limit is this process's.
    result.open_files = raise_open_files(options.watchers + 256)
    settings = {"DATABASE_URL": database_url}
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(running_service(workdir, settings))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_WRITER_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        )
        bench = WatchBench(backend, service, session, options, pool, progress)
        load = WriteLoad(without=[]) if unfiltered_load or filtered else None
        baseline = None
        if load is not None:
            await seed(service)
            progress(f"[{backend}/watch] PUT closed loop, no watchers (start) …")
            load.without.append(await bench.closed_loop())
            _progress_load(progress, "no watchers", load.without[-1])
        if latency:
            progress(f"[{backend}/watch] steady {options.rate:g} changes/s, no watchers …")
            baseline, _ = await bench.steady(None)
            _progress_steady(progress, "no watchers", baseline)
        result.metrics.append(await watch_metrics(session, service, "before the watchers"))
        if latency or unfiltered_load:
            async with watcher_process(workdir) as holder:
                await _unfiltered(bench, holder, result, baseline, latency, unfiltered_load, load)
            result.metrics.append(await _after_close(session, service))
        if filtered:
            assert load is not None
            async with watcher_process(workdir) as holder:
                load.filtered = await _filtered(bench, holder, result)
            result.metrics.append(await _after_close(session, service))
        if load is not None:
            progress(f"[{backend}/watch] PUT closed loop, no watchers (end) …")
            load.without.append(await bench.closed_loop())
            _progress_load(progress, "no watchers", load.without[-1])
            result.writes = load
        if "watch_hostile" in keys:
            progress(
                f"[{backend}/watch] {SILENT_WATCHERS} watchers that never read, over a "
                f"{BACKLOG_EVENTS} × {EVENT_PADDING // 1000} KB backlog …"
            )
            result.hostile = hostile = await measure_hostile(service, session)
            progress(
                f"    server RSS {hostile.rss_before / 2**20:.0f} MB → peak "
                f"{hostile.rss_peak / 2**20:.0f} MB (+{hostile.growth_mb:.0f} MB); "
                f"{'all closed' if hostile.closed else 'NOT all closed'} after "
                f"{hostile.closed_after:.1f} s; health p99 {hostile.health.p99:.1f} ms, "
                f"{hostile.health_failures} failed"
            )
            result.metrics.append(await watch_metrics(session, service, "hostile clients"))
    _read_log(result, service.log_path)
    if result.log_lines:
        progress(f"    server log: {result.log_lines} lines: {result.log_events}")
    return result


async def _open(
    bench: WatchBench, holder: WatcherProcess, paths: list[str], count: int, sparse: bool
) -> int:
    """`count` streams on `paths` (in turn); how many opened."""
    host, port = _host_port(bench.service.base_url)
    opened = await holder.call(
        "open",
        reply_within=OPEN_WITHIN * 3,
        host=host,
        port=port,
        paths=paths,
        api_key=BENCH_API_KEY,
        count=count,
        timed=False,
        sparse=sparse,
    )
    if not opened["opened"]:
        raise BenchSetupError(
            f"no watch stream opened: {opened['errors']} {opened['sample']}\n"
            f"watcher process log:\n{holder.log_tail()}\n"
            f"server log:\n{bench.service.log_tail()}"
        )
    bench.progress(
        f"    {opened['opened']} open, {opened['failed']} failed {opened['errors']} in "
        f"{opened['seconds']:.1f} s {opened['sample'][:200]}"
    )
    return int(opened["opened"])


async def _unfiltered(
    bench: WatchBench,
    holder: WatcherProcess,
    result: WatchResult,
    baseline: SteadyWrites | None,
    latency: bool,
    unfiltered_load: bool,
    load: WriteLoad | None,
) -> None:
    """`--watchers` streams on `GET /api/v1/watch`: change → event, then the PUT load."""
    backend, options, progress = bench.backend, bench.options, bench.progress
    session, service = bench.session, bench.service
    progress(f"[{backend}/watch] opening {options.watchers} watch streams …")
    result.opened = await _open(bench, holder, [WATCH_PATH], options.watchers, sparse=False)
    result.refused = options.watchers - result.opened
    result.metrics.append(await watch_metrics(session, service, "watchers connected"))
    if latency:
        progress(f"[{backend}/watch] change → event, {options.rate:g} changes/s …")
        result.fan_out = await bench.fan_out(holder, result.opened, baseline)
        _progress_fan_out(progress, result.fan_out)
        result.metrics.append(await watch_metrics(session, service, "after change → event"))
    if unfiltered_load and load is not None:
        progress(f"[{backend}/watch] PUT closed loop, {options.watchers} watchers …")
        await bench.closed_loop_watched(holder, load)
        assert load.with_watchers is not None
        _progress_load(progress, "with watchers", load.with_watchers)
        progress(
            f"    watchers: {load.reached}/{load.watchers} caught up in "
            f"{load.catch_up:.2f} s, {load.expected_each} events each, lost {load.lost}, "
            f"extra {load.extra}, irregular reads {load.irregular}, "
            f"watcher CPU {load.watcher_cpu:.2f}"
        )
        result.metrics.append(await watch_metrics(session, service, "after the PUT load"))
    summary = await holder.call("summary")
    result.client_resets, result.client_closed = summary["resets"], summary["closed"]
    result.reset_sample = summary["reset_sample"]


async def _filtered(
    bench: WatchBench, holder: WatcherProcess, result: WatchResult
) -> FilteredWindow:
    """A stream per seeded state (at most `--watchers`), each filtered to it; the PUT load."""
    backend, options, progress = bench.backend, bench.options, bench.progress
    count = min(options.watchers, options.seeded_ids)
    paths = [
        f"/api/v1/states/{SEED_ENTITY}/watch?entityId={seed_id(index)}" for index in range(count)
    ]
    progress(f"[{backend}/watch] opening {count} watch streams, each on one entity …")
    opened = await _open(bench, holder, paths, count, sparse=True)
    result.metrics.append(
        await watch_metrics(bench.session, bench.service, "filtered watchers connected")
    )
    progress(f"[{backend}/watch] PUT closed loop, {opened} filtered watchers …")
    window = await bench.closed_loop_filtered(holder, opened)
    _progress_load(progress, "with filtered watchers", window.result)
    lost = "—" if window.expected is None else f"{max(0, window.expected - window.received)}"
    progress(
        f"    filtered watchers: {window.received} events received of "
        f"{window.expected if window.expected is not None else '?'} written, lost {lost}, "
        f"irregular reads {window.irregular}, caught up in {window.catch_up:.2f} s, "
        f"watcher CPU {window.watcher_cpu:.2f}"
    )
    result.metrics.append(
        await watch_metrics(bench.session, bench.service, "after the filtered PUT load")
    )
    summary = await holder.call("summary")
    result.client_resets += summary["resets"]
    result.client_closed += summary["closed"]
    return window


async def _after_close(session: aiohttp.ClientSession, service: Service) -> WatchMetrics:
    """/metrics once the server has seen every stream go (at most a few seconds)."""
    deadline = time.monotonic() + _CLOSE_WITHIN
    while True:
        metrics = await watch_metrics(session, service, "watchers closed")
        if metrics.clients == 0 or time.monotonic() >= deadline:
            return metrics
        await asyncio.sleep(0.1)


def _progress_fan_out(progress: ProgressFn, fan: FanOut) -> None:
    _progress_steady(progress, "with watchers", fan.writes)
    progress(
        f"    event − response p50 {fan.after_response.p50:.1f} ms p99 "
        f"{fan.after_response.p99:.1f} ms max {fan.after_response.max:.1f} ms; last watcher "
        f"p99 {fan.last_watcher.p99:.1f} ms; lost {fan.lost}, duplicates {fan.duplicates}, "
        f"out of order {fan.out_of_order}, complete {fan.complete}/{fan.watchers}, "
        f"watcher CPU {fan.writes.cpu.watchers:.2f}"
    )


def _host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port
