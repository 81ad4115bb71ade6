"""Load-test the real service on SQLite and PostgreSQL; write bench/REPORT.md.

    .venv/bin/python -m bench.run                 # full run, both backends, 1 and 2 workers
    .venv/bin/python -m bench.run --quick         # smoke run (1 worker), prints the report only
    .venv/bin/python -m bench.run --backends sqlite --only get,put --workers 1,2
    .venv/bin/python -m bench.run --backends sqlite --profile put   # cProfile of the server
    .venv/bin/python -m bench.run --only delivery_latency,deliveries  # webhook delivery only
    .venv/bin/python -m bench.run --only watch --splice   # watch streams only, into REPORT.md
    .venv/bin/python -m bench.run --only leases --splice  # heartbeats and lease lapses only
    .venv/bin/python -m bench.run --only scale --splice   # 1,000 vs 1,000,000 states only

Every req/s figure is reported as a ratio to the trivial endpoint measured on the
same server in the same run (bench/README.md); with `--workers 1,2` every server
profile runs once as `serve` and once as `serve --workers 2`, each against its
own ceiling.

One file on purpose: the whole run (servers, profiles, phases, the order they run
in) reads top to bottom as the report's method section describes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pstats
import re
import shlex
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import aiohttp
import orjson

from bench import report
from bench.leases import LeaseOptions
from bench.leases import measure as measure_leases
from bench.load import (
    LEASE_ENTITY,
    LEASE_SEED_TTL,
    SEED_ENTITY,
    USER_STATUSES,
    LoadResult,
    LoadSpec,
    RequestKind,
    Workload,
    drive,
    lease_seed_id,
    seed_id,
)
from bench.machines import History, seed_definitions, seed_history
from bench.results import BenchRun, Measurement, Options
from bench.scale import ScaleOptions
from bench.scale import measure as measure_scale
from bench.scale_report import scale_json
from bench.scenarios import (
    BACKENDS,
    DELIVERY_SCENARIOS,
    HEARTBEAT_KEY,
    LEASE_GROUP,
    LEASE_SCENARIOS,
    PROFILES,
    SCALE_KEY,
    WATCH_GROUP,
    WATCH_SCENARIOS,
    DeliveryScenario,
    LeaseScenario,
    Scenario,
    ServerProfile,
    WatchScenario,
    section_label,
)
from bench.server import (
    BENCH_API_KEY,
    BenchSetupError,
    Service,
    admin_service,
    postgres_database,
    redis_server,
    redis_server_available,
    redis_stats,
    running_service,
    sqlite_database,
)
from bench.stream import STREAM_KEYS, StreamOptions
from bench.stream import measure as measure_stream
from bench.watch import WatchOptions
from bench.watch import measure as measure_watch
from bench.webhooks import DeliveryOptions, percentile
from bench.webhooks import measure as measure_deliveries

DEFAULT_REPORT = Path(__file__).with_name("REPORT.md")


@dataclass
class Seeded:
    """What is already in the run's database (one per backend)."""

    users: bool = False
    services: bool = False
    definitions: bool = False
    history: History | None = None


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- seeding --------------------------------------------------------------------


async def seed_states(service: Service, count: int) -> None:
    """`count` `user` states with ids seed-000000…, statuses spread evenly."""
    headers = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}
    url = f"{service.base_url}/api/v1/states/{SEED_ENTITY}/batch"
    async with aiohttp.ClientSession() as session:
        for start in range(0, count, 1000):
            items = [
                {"entityId": seed_id(i), "status": USER_STATUSES[i % len(USER_STATUSES)]}
                for i in range(start, min(start + 1000, count))
            ]
            body = orjson.dumps({"items": items, "atomic": True})
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise BenchSetupError(
                        f"seeding failed: HTTP {response.status}: {(await response.text())[:500]}"
                        f"\nserver log:\n{service.log_tail()}"
                    )


async def seed_lease_states(service: Service, count: int) -> None:
    """`count` `service` states (`up`) with ids svc-000000…, each holding a lease
    of LEASE_SEED_TTL seconds: what the heartbeat row renews."""
    headers = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}
    url = f"{service.base_url}/api/v1/states/{LEASE_ENTITY}/batch"
    async with aiohttp.ClientSession() as session:
        for start in range(0, count, 1000):
            items = [
                {"entityId": lease_seed_id(i), "status": "up", "ttl": LEASE_SEED_TTL}
                for i in range(start, min(start + 1000, count))
            ]
            body = orjson.dumps({"items": items, "atomic": True})
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise BenchSetupError(
                        f"seeding leases failed: HTTP {response.status}: "
                        f"{(await response.text())[:500]}\nserver log:\n{service.log_tail()}"
                    )


async def _touch_seeds(service: Service) -> None:
    headers = {"x-api-key": BENCH_API_KEY}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            url = f"{service.base_url}/api/v1/states/{SEED_ENTITY}/{seed_id(0)}"
            async with session.get(url, headers=headers) as response:
                await response.read()


async def _until_replicated(service: Service, run: BenchRun, label: str) -> None:
    """Wait until the Admin Service has every change (the seeded states before
    the rows; the rows' writes after them) and note how long that took."""
    started = time.monotonic()
    backlog = -1
    async with aiohttp.ClientSession() as http:
        for _ in range(1200):
            async with http.get(f"{service.base_url}/health") as answer:
                backlog = (await answer.json())["checks"]["externalDb"]["backlog"]
            if backlog == 0:
                break
            await asyncio.sleep(0.25)
    waited = time.monotonic() - started
    run.notes.append(
        f"{label}: the Admin Service caught up {waited:.1f} s later"
        + ("" if backlog == 0 else f" (gave up with {backlog} changes still waiting)")
        + "."
    )


async def warm_reads(service: Service, count: int) -> None:
    """GET every seeded state, so that the cache-hit rows measure hits rather
    than the first read of each id. Each of N worker processes has its own near
    cache, and a keep-alive connection stays with one worker, so with N > 1
    every request opens a new connection (the kernel hands it to any worker)
    and the ids are read 2N times over."""
    headers = {"x-api-key": BENCH_API_KEY}
    base = f"{service.base_url}/api/v1/states/{SEED_ENTITY}/"
    connector = aiohttp.TCPConnector(limit=16, force_close=service.workers > 1)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def reader(ids: list[int]) -> None:
            for index in ids:
                async with session.get(base + seed_id(index), headers=headers) as response:
                    await response.read()

        for _ in range(2 * service.workers if service.workers > 1 else 1):
            await asyncio.gather(*(reader(list(range(i, count, 16))) for i in range(16)))


_CACHE_COUNTER = re.compile(
    rb'^potok_cache_requests_total\{(?=.*tier="local")(?=.*result="(\w+)").*\} ([0-9.e+]+)$', re.M
)


async def local_tier_counters(service: Service) -> dict[str, int]:
    """The service's own count of local-tier lookups by result (hit, miss, error,
    skipped: circuit open), from /metrics; one worker's view, so only asked of a
    one-worker server."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service.base_url}/metrics") as response,
    ):
        text = await response.read()
    return {result.decode(): int(float(value)) for result, value in _CACHE_COUNTER.findall(text)}


# -- one server configuration ----------------------------------------------------


def _judge_against_ceilings(measured: list[Measurement], probes: dict[int, LoadResult]) -> None:
    """Set each row's ceiling. The host's speed drifts within a section (its two
    ceiling rows have differed by a third), so a row is judged against the ceiling
    probes measured just before and just after it (the next row's probe, or the
    section's closing ceiling row); without probes, and for the ceiling rows
    themselves, against the mean of the section's ceiling rows, which then show
    the drift."""
    ceilings = [m for m in measured if m.scenario.ceiling]
    section = _mean_ceiling([m.result for m in ceilings])
    after: LoadResult | None = ceilings[-1].result if ceilings else None
    for index in range(len(measured) - 1, -1, -1):
        measurement = measured[index]
        before = probes.get(index)
        if before is None or after is None or measurement.scenario.ceiling:
            measurement.ceiling_rate, measurement.ceiling_per_cpu = section
        else:
            measurement.ceiling_rate, measurement.ceiling_per_cpu = _mean_ceiling([before, after])
        if before is not None:
            after = before


def _mean_ceiling(results: list[LoadResult]) -> tuple[float, float]:
    """(req/s, req/s per server CPU-s) of these ceiling runs, averaged."""
    if not results:
        return 0.0, 0.0
    per_cpu = [r.rate / r.server_cpu if r.server_cpu > 0 else 0.0 for r in results]
    return sum(r.rate for r in results) / len(results), sum(per_cpu) / len(per_cpu)


def _selected(profile: ServerProfile, options: Options, workers: int) -> list[Scenario]:
    available = [s for s in profile.scenarios if workers == 1 or not s.one_worker_only]
    if options.profile is not None:
        return [s for s in available if s.key == options.profile]
    chosen = [s for s in available if not options.only or s.key in options.only]
    if not any(not s.ceiling for s in chosen):
        return []
    return [s for s in available if s in chosen or s.ceiling]


def _spec(scenario: Scenario, service: Service, options: Options, seeded: Seeded) -> LoadSpec:
    history = seeded.history
    workload = Workload(
        kind=scenario.kind,
        base_url=service.base_url,
        api_key=BENCH_API_KEY,
        seeded_ids=options.seed,
        tag=uuid.uuid4().hex[:8],
        as_of_revisions=history.revisions if history else (0, 0),
        as_of_times=history.times if history else (),
    )
    if scenario.sequential:
        return LoadSpec(workload, service.pid, concurrency=1, count=options.batches, warmup_count=1)
    return LoadSpec(
        workload,
        service.pid,
        concurrency=options.concurrency,
        duration=options.duration,
        warmup=options.warmup,
    )


async def bench_profile(
    run: BenchRun,
    backend: str,
    workers: int,
    profile: ServerProfile,
    database_url: str,
    workdir: Path,
    pool: ProcessPoolExecutor,
    seeded: Seeded,
) -> None:
    options = run.options
    scenarios = _selected(profile, options, workers)
    if not scenarios:
        return
    label = section_label(backend, workers, profile)
    if profile.needs_redis and options.cache == "off":
        run.notes.append(f"{label}: skipped (--cache off).")
        return
    if profile.needs_redis and not redis_server_available():
        run.notes.append(f"{label}: skipped: redis-server is not installed.")
        return
    profile_path = workdir / f"{backend}-{profile.key}.prof" if options.profile else None
    async with AsyncExitStack() as stack:
        settings = {"DATABASE_URL": database_url, **profile.settings}
        redis_port = None
        if profile.needs_redis:
            redis_port = await stack.enter_async_context(redis_server(workdir))
            settings["REDIS_LOCAL_PORT"] = str(redis_port)
        if profile.needs_admin_service:
            settings.update(await stack.enter_async_context(admin_service(workdir)))
        service = await stack.enter_async_context(
            running_service(workdir, settings, profile_to=profile_path, workers=workers)
        )
        if not seeded.users:
            await seed_states(service, options.seed)
            seeded.users = True
        if not seeded.services and any(s.key == HEARTBEAT_KEY for s in scenarios):
            await seed_lease_states(service, options.seed)
            seeded.services = True
        kinds = {s.kind for s in scenarios}
        if not seeded.definitions and kinds & {RequestKind.PUT_DEFINED, RequestKind.PUT_SCHEMA}:
            await seed_definitions(service, options.seed)
            seeded.definitions = True
        if seeded.history is None and kinds & {
            RequestKind.AS_OF_REVISION,
            RequestKind.AS_OF_TIME,
        }:
            seeded.history = await seed_history(service)
        if profile.needs_admin_service:
            await _until_replicated(service, run, label)
        if redis_port is not None:
            await _touch_seeds(service)
            stats = await redis_stats(redis_port)
            if stats["keys"] == 0:
                run.notes.append(
                    f"{label}: skipped: with REDIS_LOCAL_ENABLED=true the service stored "
                    "nothing in Redis after two GETs, so it has no Redis read cache. The "
                    "Redis profiles (`CACHED`, `REDIS_ONLY` in bench/scenarios.py) run as "
                    "soon as it does."
                )
                return
            await warm_reads(service, options.seed)
        counters_before = {}
        if redis_port is not None and workers == 1:
            counters_before = await local_tier_counters(service)
        measured: list[Measurement] = []
        # Ceiling probes, by the index of the row each was measured just before.
        probes: dict[int, LoadResult] = {}
        loop = asyncio.get_running_loop()
        # None under --profile, which runs the one scenario alone.
        ceiling_scenario = next((s for s in scenarios if s.ceiling), None)
        for scenario in scenarios:
            probed = not (scenario.ceiling or scenario.sequential)
            if ceiling_scenario is not None and options.probe > 0 and probed:
                probe_spec = replace(
                    _spec(ceiling_scenario, service, options, seeded),
                    duration=options.probe,
                    warmup=options.probe / 4,
                )
                probes[len(measured)] = await loop.run_in_executor(pool, drive, probe_spec)
            _progress(f"[{backend}/{workers}w/{profile.key}] {scenario.title} …")
            spec = _spec(scenario, service, options, seeded)
            result = await loop.run_in_executor(pool, drive, spec)
            if service.process.poll() is not None:
                raise BenchSetupError(
                    f"the service died during {scenario.key}:\n{service.log_tail()}"
                )
            measured.append(Measurement(backend, workers, profile.key, scenario, result))
            _progress(
                f"    {result.rate:9.1f} req/s  p50 {result.percentile(50):7.2f} ms  "
                f"p99 {result.percentile(99):7.2f} ms  errors {result.errors}  "
                f"server CPU {result.server_cpu:.2f}  client CPU {result.client_cpu:.2f}"
            )
            if result.errors:
                _progress(f"    errors: {result.error_kinds} e.g. {result.error_sample}")
        if profile.needs_admin_service:
            await _until_replicated(service, run, label)
        if redis_port is not None:
            stats = await redis_stats(redis_port)
            if workers == 1:
                after = await local_tier_counters(service)
                stats.update(
                    {
                        f"service {result}": after.get(result, 0) - counters_before.get(result, 0)
                        for result in ("hit", "miss", "error", "skipped")
                    }
                )
            run.redis[label] = stats
    _judge_against_ceilings(measured, probes)
    by_key = {m.scenario.key: m for m in measured}
    for measurement in measured:
        goal = measurement.scenario.goal_for(backend)
        if goal and goal.relative_to:
            measurement.reference = by_key.get(goal.relative_to)
    run.measurements.extend(measured)
    if profile_path is not None and profile_path.exists():
        _print_profile(profile_path, f"{label} / {options.profile}")


def _print_profile(path: Path, title: str) -> None:
    print(f"\n=== server cProfile: {title} (whole server lifetime) ===")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.strip_dirs().sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


async def bench_backend(run: BenchRun, backend: str, pool: ProcessPoolExecutor) -> None:
    with tempfile.TemporaryDirectory(prefix=f"potok-bench-{backend}-") as tmp:
        workdir = Path(tmp)
        database = sqlite_database if backend == "sqlite" else postgres_database
        async with database(workdir) as url:
            seeded = Seeded()
            for workers in run.options.workers:
                for profile in PROFILES:
                    await bench_profile(run, backend, workers, profile, url, workdir, pool, seeded)
            await bench_deliveries(run, backend, url, workdir, pool)
            await bench_watch(run, backend, url, workdir, pool, seeded)
            await bench_leases(run, backend, url, workdir)
            await bench_stream(run, backend, url, workdir)
        if run.options.scale is not None:
            # A database of its own: it grows to a size the others should not see.
            scale_dir = workdir / "scale"
            scale_dir.mkdir()
            async with database(scale_dir) as url:
                await bench_scale(run, backend, url, scale_dir, pool)


def _selected_deliveries(options: Options) -> list[DeliveryScenario]:
    if options.profile is not None:
        return []
    return [s for s in DELIVERY_SCENARIOS if not options.only or s.key in options.only]


async def bench_deliveries(
    run: BenchRun, backend: str, database_url: str, workdir: Path, pool: ProcessPoolExecutor
) -> None:
    """The webhook figures (bench/webhooks.py): their own servers (one uvicorn
    worker each) and delivery worker, on the same database, after the request
    scenarios. They belong to the 1-worker section only."""
    scenarios = _selected_deliveries(run.options)
    if not scenarios:
        return
    if 1 not in run.options.workers:
        keys = ", ".join(s.key for s in scenarios)
        run.notes.append(f"{backend}: webhook delivery ({keys}) runs with --workers 1 only.")
        return
    results = await measure_deliveries(
        backend, database_url, workdir, scenarios, run.options.deliveries, pool, _progress
    )
    run.delivery_latencies.extend(results.latencies)
    run.delivery_rates.extend(results.throughputs)
    run.notes.extend(results.notes)


def _selected_watch(options: Options) -> list[WatchScenario]:
    if options.profile is not None:
        return []
    return [s for s in WATCH_SCENARIOS if not options.only or s.key in options.only]


async def bench_watch(
    run: BenchRun,
    backend: str,
    database_url: str,
    workdir: Path,
    pool: ProcessPoolExecutor,
    seeded: Seeded,
) -> None:
    """The watch stream figures (bench/watch.py): their own one-worker server on
    the same database, after the other scenarios."""
    scenarios = _selected_watch(run.options)
    if not scenarios:
        return
    if 1 not in run.options.workers:
        keys = ", ".join(s.key for s in scenarios)
        run.notes.append(f"{backend}: watch streams ({keys}) run with --workers 1 only.")
        return

    async def seed(service: Service) -> None:
        if not seeded.users:
            await seed_states(service, run.options.seed)
            seeded.users = True

    result = await measure_watch(
        backend, database_url, workdir, scenarios, run.options.watch, pool, seed, _progress
    )
    run.watch.append(result)


def _selected_leases(options: Options) -> list[LeaseScenario]:
    if options.profile is not None:
        return []
    return [s for s in LEASE_SCENARIOS if not options.only or s.key in options.only]


async def bench_leases(run: BenchRun, backend: str, database_url: str, workdir: Path) -> None:
    """The lease lapse figures (bench/leases.py): a one-worker server of their
    own per scenario, on the same database, after the other scenarios."""
    scenarios = _selected_leases(run.options)
    if not scenarios:
        return
    if 1 not in run.options.workers:
        keys = ", ".join(s.key for s in scenarios)
        run.notes.append(f"{backend}: lease lapses ({keys}) run with --workers 1 only.")
        return
    run.leases.extend(
        await measure_leases(
            backend, database_url, workdir, scenarios, run.options.leases, _progress
        )
    )


async def bench_stream(run: BenchRun, backend: str, database_url: str, workdir: Path) -> None:
    """The event stream figures (bench/stream.py): one-worker servers of their own
    and a private nats-server, on the same database, after the other scenarios."""
    options = run.options
    keys = {key for key in STREAM_KEYS if not options.only or key in options.only}
    if options.profile is not None or not keys:
        return
    if 1 not in options.workers:
        run.notes.append(
            f"{backend}: the event stream ({', '.join(sorted(keys))}) runs with --workers 1 only."
        )
        return
    results = await measure_stream(backend, database_url, workdir, keys, options.stream, _progress)
    run.stream.rates.extend(results.rates)
    run.stream.latencies.extend(results.latencies)


async def bench_scale(
    run: BenchRun, backend: str, database_url: str, workdir: Path, pool: ProcessPoolExecutor
) -> None:
    """The large-store section (bench/scale.py), one worker."""
    assert run.options.scale is not None
    if 1 not in run.options.workers:
        run.notes.append(f"{backend}: the large-store section runs with --workers 1 only.")
        return
    run.scale.append(
        await measure_scale(backend, database_url, workdir, run.options.scale, pool, _progress)
    )


async def bench(options: Options) -> BenchRun:
    run = BenchRun(options)
    # One generator process for the whole run, started before any measurement.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        for backend in options.backends:
            try:
                await bench_backend(run, backend, pool)
            except BenchSetupError as exc:
                # Report what the other backend measured rather than nothing.
                _progress(f"bench: {backend}: {exc}")
                run.notes.append(f"{backend}: run aborted: {str(exc).splitlines()[0]}")
    one_worker = {
        (m.backend, m.profile, m.scenario.key): m.ratio for m in run.measurements if m.workers == 1
    }
    for m in run.measurements:
        if m.workers > 1:
            m.one_worker_ratio = one_worker.get((m.backend, m.profile, m.scenario.key))
    return run


# -- command line ----------------------------------------------------------------


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--duration", type=float, help="measured seconds per scenario (6)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each (1.5)")
    parser.add_argument(
        "--probe",
        type=float,
        help="measured seconds of the ceiling probe before each row (2; quick 0.5; 0: none)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="connections (64)")
    parser.add_argument("--batches", type=int, help="1000-item batches per batch scenario (15)")
    parser.add_argument("--seed", type=int, default=1000, help="user states seeded for GET/PUT")
    parser.add_argument(
        "--delivery-rate", type=float, default=50.0, help="changes/s, webhook latency (50)"
    )
    parser.add_argument(
        "--delivery-changes", type=int, help="changes timed, webhook latency (600; quick 100)"
    )
    parser.add_argument(
        "--delivery-backlog", type=int, help="deliveries queued for deliveries/s (5000; quick 1000)"
    )
    parser.add_argument(
        "--watchers", type=int, default=1000, help="watch streams held at once (1000)"
    )
    parser.add_argument(
        "--watch-rate", type=float, default=100.0, help="changes/s, change → event (100)"
    )
    parser.add_argument(
        "--watch-changes", type=int, help="changes timed, change → event (1000; quick 200)"
    )
    parser.add_argument("--leases", type=int, help="leases lapsing together (10000; quick 2000)")
    parser.add_argument(
        "--lease-ttl", type=int, default=3, help="s from setting the deadlines to them (3)"
    )
    parser.add_argument(
        "--stream-backlog", type=int, help="changes the stream publisher drains (20000; quick 3000)"
    )
    parser.add_argument(
        "--stream-rate", type=float, default=1000.0, help="changes/s, change → message (1000)"
    )
    parser.add_argument(
        "--stream-changes", type=int, help="changes timed, change → message (10000; quick 2000)"
    )
    parser.add_argument(
        "--cache",
        choices=("auto", "off"),
        default="auto",
        help="auto: run the Redis profiles when the service caches in Redis",
    )
    parser.add_argument(
        "--scale-states",
        type=int,
        default=1_000_000,
        help="states of the large store, `--only scale` (1,000,000)",
    )
    parser.add_argument("--only", default="", help="scenario keys, e.g. get,put (ceiling kept)")
    parser.add_argument(
        "--workers",
        help="comma-separated `serve --workers N` counts, one section each "
        "(1,2; quick and --profile: 1)",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run, no report file")
    parser.add_argument("--profile", help="run one scenario with the server under cProfile")
    parser.add_argument("--report", type=Path, help=f"report path (default {DEFAULT_REPORT})")
    parser.add_argument(
        "--splice",
        action="store_true",
        help="write only the watch, leases and large-store sections into --report (default "
        "bench/REPORT.md), keeping every other section; with --only watch, leases and/or scale",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON")
    args = parser.parse_args(argv)

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = set(backends) - set(BACKENDS)
    if unknown or not backends:
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    keys = {s.key for p in PROFILES for s in p.scenarios}
    delivery_keys = {s.key for s in DELIVERY_SCENARIOS}
    watch_keys = {s.key for s in WATCH_SCENARIOS}
    lease_keys = {s.key for s in LEASE_SCENARIOS}
    only = frozenset(k.strip() for k in args.only.split(",") if k.strip())
    if WATCH_GROUP in only:
        only = only - {WATCH_GROUP} | watch_keys
    if LEASE_GROUP in only:
        only = only - {LEASE_GROUP} | lease_keys | {HEARTBEAT_KEY}
    known_keys = keys | delivery_keys | watch_keys | lease_keys | set(STREAM_KEYS) | {SCALE_KEY}
    if only - known_keys or (args.profile and args.profile not in keys):
        known = [
            *sorted(known_keys),
            f"{WATCH_GROUP} (all watch_*)",
            f"{LEASE_GROUP} ({HEARTBEAT_KEY} and all lease_*)",
            f"{SCALE_KEY} (the large-store section)",
        ]
        parser.error(f"scenario keys: {', '.join(known)}")
    spliced = watch_keys | lease_keys | {HEARTBEAT_KEY, SCALE_KEY}
    if args.splice and (args.profile or (only and not only & spliced)):
        parser.error(
            "--splice writes the watch, leases and large-store sections: run it with "
            "--only watch, --only leases, --only scale (or no --only)"
        )
    if not 2 * 1000 <= args.scale_states <= 1_000_000:
        parser.error("--scale-states: from 2,000 to 1,000,000 (the seeded ids have 6 digits)")
    if (args.leases or 1) < 1 or args.lease_ttl < 1:
        parser.error("--leases and --lease-ttl must be positive")
    if args.watchers < 1 or args.watch_rate <= 0 or (args.watch_changes or 1) < 1:
        parser.error("--watchers, --watch-rate and --watch-changes must be positive")
    if args.delivery_rate <= 0 or (args.delivery_changes or 1) < 1:
        parser.error("--delivery-rate and --delivery-changes must be positive")
    if (args.delivery_backlog or 2) < 2:
        parser.error("--delivery-backlog must be at least 2")
    quick = args.quick
    try:
        default_workers = "1" if quick or args.profile else "1,2"
        counts = (args.workers or default_workers).split(",")
        workers = tuple(sorted({int(w) for w in counts if w.strip()}))
    except ValueError:
        parser.error("--workers: comma-separated positive integers, e.g. 1,2")
    if not workers or min(workers) < 1:
        parser.error("--workers: comma-separated positive integers, e.g. 1,2")
    if args.profile and workers != (1,):
        parser.error("--profile runs the server under cProfile: it needs --workers 1")
    # A smoke run or a profile must not overwrite the report of a full run.
    report_path = args.report or (None if quick or args.profile or only else DEFAULT_REPORT)
    if args.splice:
        report_path = args.report or DEFAULT_REPORT
    duration = args.duration or (1.5 if quick else 6.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.5)
    return Options(
        backends=backends,
        duration=duration,
        warmup=warmup,
        concurrency=args.concurrency,
        batches=args.batches or (3 if quick else 15),
        seed=args.seed,
        cache=args.cache,
        only=only,
        workers=workers,
        probe=args.probe if args.probe is not None else (0.5 if quick else 2.0),
        profile=args.profile,
        report_path=report_path,
        json_path=args.json,
        command=shlex.join([".venv/bin/python", "-m", "bench.run", *sys.argv[1:]]),
        deliveries=DeliveryOptions(
            rate=args.delivery_rate,
            changes=args.delivery_changes or (100 if quick else 600),
            backlog=args.delivery_backlog or (1000 if quick else 5000),
            concurrency=args.concurrency,
        ),
        watch=WatchOptions(
            watchers=args.watchers,
            rate=args.watch_rate,
            changes=args.watch_changes or (200 if quick else 1000),
            warmup_changes=max(1, round(args.watch_rate)),
            duration=duration,
            warmup=warmup,
            concurrency=args.concurrency,
            seeded_ids=args.seed,
        ),
        leases=LeaseOptions(
            leases=args.leases or (2000 if quick else 10_000),
            ttl=args.lease_ttl,
        ),
        stream=StreamOptions(
            backlog=args.stream_backlog or (3000 if quick else 20_000),
            rate=args.stream_rate,
            changes=args.stream_changes or (2000 if quick else 10_000),
        ),
        scale=(
            ScaleOptions(
                states=args.scale_states,
                duration=duration,
                warmup=warmup,
                concurrency=args.concurrency,
            )
            # Skipped by quick runs and profiles unless asked for by name.
            if SCALE_KEY in only or (not only and not quick and not args.profile)
            else None
        ),
        splice=args.splice,
    )


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    machine = report.machine_info(options.backends)
    try:
        run = asyncio.run(bench(options))
    except BenchSetupError as exc:
        sys.exit(f"bench: {exc}")
    machine["load average at end"] = report.load_average()
    rendered = report.render(run, machine)
    if options.splice and options.report_path is not None:
        print(rendered)
        spliced, headings = report.splice_sections(rendered, options.report_path)
        if not headings:
            _progress(f"no section to splice into {options.report_path}")
        else:
            options.report_path.write_text(spliced)
            _progress(f"wrote {', '.join(headings)} into {options.report_path}")
    elif options.report_path is not None:
        options.report_path.write_text(report.keep_analysis(rendered, options.report_path))
        _progress(f"wrote {options.report_path}")
    else:
        print(rendered)
    if options.json_path is not None:
        payload = {
            "machine": machine,
            "command": options.command,
            "notes": run.notes,
            "redis": run.redis,
            "measurements": [
                {
                    "backend": m.backend,
                    "workers": m.workers,
                    "profile": m.profile,
                    "scenario": m.scenario.key,
                    "rate": m.result.rate,
                    "p50_ms": m.result.percentile(50),
                    "p99_ms": m.result.percentile(99),
                    "ratio": m.ratio,
                    "per_server_cpu_second": m.per_cpu,
                    "cpu_ratio": m.cpu_ratio,
                    "ceiling_rate": m.ceiling_rate,
                    **{k: v for k, v in asdict(m.result).items() if k != "latencies_ms"},
                }
                for m in run.measurements
            ],
            "webhook_latency": [
                {
                    "backend": r.backend,
                    "scenario": r.scenario.key,
                    "worker": r.worker,
                    "written": r.written,
                    "write_errors": r.write_errors,
                    "write_rate": r.write_rate,
                    "lost": r.lost,
                    "duplicates": r.duplicates,
                    **{
                        f"{name}_p{p}_ms": percentile(values, p)
                        for name, values in (
                            ("after_response", r.after_response_ms),
                            ("after_request", r.after_request_ms),
                            ("write", r.write_ms),
                        )
                        for p in (50, 99, 100)
                    },
                }
                for r in run.delivery_latencies
            ],
            "webhook_deliveries": [
                {
                    "backend": t.backend,
                    "scenario": t.scenario.key,
                    "worker": t.worker,
                    "subscriptions": t.scenario.subscriptions,
                    "expected": t.expected,
                    "delivered": t.delivered,
                    "lost": t.lost,
                    "duplicates": t.duplicates,
                    "elapsed": t.elapsed,
                    "rate": t.rate,
                    "raw_rates": t.raw_rates,
                    "raw_rate": t.raw_rate,
                    "ratio": t.ratio,
                    "first_after_start": t.first_after_start,
                    "worker_cpu": t.worker_cpu,
                    "postgres_cpu": t.postgres_cpu,
                    "receiver_cpu": t.receiver_cpu,
                    "raw_client_cpu": t.raw_client_cpu,
                }
                for t in run.delivery_rates
            ],
            "watch": [w.to_json() for w in run.watch],
            "leases": [r.to_json() for r in run.leases],
            "scale": [scale_json(r) for r in run.scale],
        }
        options.json_path.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
