"""Webhook delivery figures of bench/README.md, against the real service.

* change → first delivery attempt: changes are written at a fixed rate (open
  loop, each a POST with a new entity id); a receiver in this process on
  127.0.0.1 answers 200 and notes when each entity's event arrives; latency =
  arrival − the write's response (and − the write's start). Same clock: the
  writer and the receiver share this process's event loop.
* deliveries per second of one worker: with the worker stopped, a backlog is
  written (atomic batches of new ids); then the worker starts and the receiver
  times first → last arrival. The ceiling is the raw aiohttp client POSTing the
  same body to the same receiver at the same concurrency, from the generator
  process (as the worker is a process of its own), before and after the drain.

The worker is `potok-state worker` on PostgreSQL (server with
WEBHOOK_EMBEDDED_WORKER=false, woken by NOTIFY) and the server's embedded worker
on SQLite. Each scenario starts its own processes and deletes its
subscriptions, so it runs alone (`--only deliveries`) or after the others.

One file on purpose: each measurement's setup, load and timing read top to bottom,
next to the receiver they share.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from bench.load import SEED_ENTITY, postgres_cpu_seconds, process_cpu_seconds
from bench.scenarios import DeliveryScenario
from bench.server import (
    BENCH_API_KEY,
    BenchSetupError,
    ManagedProcess,
    Service,
    free_port,
    running_service,
    running_worker,
)

LOOPBACK = "127.0.0.1"
_API_HEADERS = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}
_BATCH = 1000
_PROBE_WITHIN = 30.0
"""Seconds for the first (unmeasured) event to reach the receiver."""
_SETTLE = 30.0
"""Seconds the latency scenario waits for stragglers after its last write."""
_STALL = 30.0
"""A drain that delivers nothing new for this long is given up (the rest: lost)."""


@dataclass(frozen=True)
class DeliveryOptions:
    rate: float
    """Changes per second written in the latency scenario."""
    changes: int
    """Changes written (and measured) in the latency scenario."""
    backlog: int
    """Deliveries queued while the worker is stopped, in the throughput scenarios."""
    concurrency: int
    """WEBHOOK_WORKER_CONCURRENCY, and the raw client's concurrency."""


# -- results ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest rank, as `LoadResult.percentile`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LatencyResult:
    backend: str
    scenario: DeliveryScenario
    worker: str
    written: int
    write_errors: int
    write_rate: float
    """Changes per second actually started (the schedule's rate unless this process lagged)."""
    after_response_ms: list[float]
    """Arrival − the write's response, per delivered change (negative: the delivery
    came before the response did)."""
    after_request_ms: list[float]
    write_ms: list[float]
    lost: int
    duplicates: int
    error_sample: str = ""


@dataclass
class ThroughputResult:
    backend: str
    scenario: DeliveryScenario
    worker: str
    expected: int
    delivered: int
    duplicates: int
    elapsed: float
    """First → last arrival, s."""
    first_after_start: float
    """Worker process spawn → first arrival, s (start-up, dispatch, first claim)."""
    raw_rates: list[float]
    raw_errors: int
    worker_cpu: float
    """Worker process CPU, cores, over first → last arrival."""
    postgres_cpu: float
    receiver_cpu: float
    """This process (the receiver) CPU, cores, over the same window."""
    raw_client_cpu: float = 0.0
    error_sample: str = ""

    @property
    def lost(self) -> int:
        return self.expected - self.delivered

    @property
    def rate(self) -> float:
        if self.delivered < 2 or self.elapsed <= 0:
            return 0.0
        return (self.delivered - 1) / self.elapsed

    @property
    def raw_rate(self) -> float:
        return sum(self.raw_rates) / len(self.raw_rates) if self.raw_rates else 0.0

    @property
    def ratio(self) -> float | None:
        return self.rate / self.raw_rate if self.raw_rate > 0 else None


@dataclass
class DeliveryResults:
    latencies: list[LatencyResult] = field(default_factory=list)
    throughputs: list[ThroughputResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- the receiver ---------------------------------------------------------------------


@asynccontextmanager
async def listening(app: web.Application) -> AsyncIterator[int]:
    """`app` served on a free loopback port (yielded) until the block ends."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, LOOPBACK, port, backlog=1024)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


class Receiver:
    """An aiohttp server on 127.0.0.1 answering 200: `/hook/{name}` records the
    first arrival of each entity id per hook, `/raw` only counts."""

    def __init__(self) -> None:
        self.arrivals: dict[str, dict[str, float]] = {}
        self.duplicates = 0
        self.malformed = 0
        self.raw = 0
        self.last_arrival = 0.0
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def hook(self, name: str) -> dict[str, float]:
        return self.arrivals.setdefault(name, {})

    def delivered(self, hooks: list[str]) -> int:
        return sum(len(self.arrivals.get(name, {})) for name in hooks)

    async def _on_hook(self, request: web.Request) -> web.Response:
        arrived = time.perf_counter()
        body = await request.read()
        try:
            entity_id = str(orjson.loads(body)["data"]["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.malformed += 1
            return web.Response(status=200)
        seen = self.hook(request.match_info["name"])
        if entity_id in seen:
            self.duplicates += 1
        else:
            seen[entity_id] = arrived
            self.last_arrival = arrived
        return web.Response(status=200)

    async def _on_raw(self, request: web.Request) -> web.Response:
        await request.read()
        self.raw += 1
        return web.Response(status=200)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/hook/{name}", self._on_hook)
        app.router.add_post("/raw", self._on_raw)
        async with listening(app) as self.port:
            yield self

    async def wait_for(
        self, hooks: list[str], count: int, *, within: float, stall: float | None = None
    ) -> bool:
        """Until `count` distinct arrivals over `hooks`, at most `within` s (and,
        with `stall`, at most that long without a new one)."""
        deadline = time.perf_counter() + within
        last_count, last_change = -1, time.perf_counter()
        while (now := time.perf_counter()) < deadline:
            delivered = self.delivered(hooks)
            if delivered >= count:
                return True
            if delivered != last_count:
                last_count, last_change = delivered, now
            elif stall is not None and now - last_change > stall:
                return False
            await asyncio.sleep(0.01)
        return False


# -- the raw client (runs in the generator process) -------------------------------------


@dataclass(frozen=True)
class RawSpec:
    url: str
    concurrency: int
    count: int
    body: bytes
    headers: dict[str, str]
    warmup: int
    time_limit: float


@dataclass(frozen=True)
class RawResult:
    requests: int
    errors: int
    elapsed: float
    client_cpu: float
    error_sample: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


async def _raw(spec: RawSpec) -> RawResult:
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    errors = 0
    sample = ""
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post() -> None:
            nonlocal errors, sample
            try:
                async with session.post(spec.url, data=spec.body, headers=spec.headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        sample = sample or f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors += 1
                sample = sample or f"{type(exc).__name__}: {exc}"[:300]

        async def run(total: int, stop_at: float) -> int:
            issued = 0

            async def worker() -> None:
                nonlocal issued
                while issued < total and time.perf_counter() < stop_at:
                    issued += 1
                    await post()

            await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
            return issued

        await run(spec.warmup, time.perf_counter() + spec.time_limit)
        errors, sample = 0, ""
        cpu = time.process_time()
        started = time.perf_counter()
        sent = await run(spec.count, started + spec.time_limit)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return RawResult(sent - errors, errors, elapsed, cpu / elapsed if elapsed else 0.0, sample)


def raw_post_rate(spec: RawSpec) -> RawResult:
    """Entry point in the generator process."""
    return asyncio.run(_raw(spec))


def _sample_body() -> tuple[bytes, dict[str, str]]:
    """An `entity.created` payload and header set shaped like the worker's."""
    body = orjson.dumps(
        {
            "id": "evt_" + uuid.uuid4().hex,
            "event": "entity.created",
            "revision": 123456,
            "timestamp": "2025-11-10T10:00:00.000Z",
            "data": {
                "entity": SEED_ENTITY,
                "id": "raw-0000000000-000000",
                "version": 1,
                "previousStatus": None,
                "newStatus": "online",
                "metadata": {},
            },
        }
    )
    event_id = "evt_" + "0" * 32
    headers = {
        "content-type": "application/json",
        "User-Agent": "Potok-State-Webhooks/1",
        "X-Webhook-Signature": "sha256=" + "0" * 64,
        "X-Webhook-Id": event_id,
        "X-Webhook-Event": "entity.created",
        "X-Webhook-Timestamp": "1762768800",
        "X-Webhook-Attempt": "1",
        "webhook-id": event_id,
        "webhook-timestamp": "1762768800",
        "webhook-signature": "v1," + "A" * 43 + "=",
    }
    return body, headers


# -- talking to the service ------------------------------------------------------------


async def _api(
    session: aiohttp.ClientSession,
    service: Service,
    method: str,
    path: str,
    body: object | None,
    expect: int,
) -> bytes:
    data = orjson.dumps(body) if body is not None else None
    url = service.base_url + path
    async with session.request(method, url, data=data, headers=_API_HEADERS) as response:
        payload = await response.read()
        if response.status != expect:
            raise BenchSetupError(
                f"{method} {path}: HTTP {response.status} (expected {expect}): "
                f"{payload[:500].decode(errors='replace')}\nserver log:\n{service.log_tail()}"
            )
        return payload


async def _subscribe(
    session: aiohttp.ClientSession, service: Service, receiver: Receiver, hook: str
) -> str:
    created = await _api(
        session,
        service,
        "POST",
        "/api/v1/webhooks/subscriptions",
        {
            "url": f"{receiver.base_url}/hook/{hook}",
            "events": ["entity.*"],
            "entityTypes": [SEED_ENTITY],
            "description": "bench",
        },
        201,
    )
    return str(orjson.loads(created)["id"])


async def _unsubscribe(session: aiohttp.ClientSession, service: Service, ids: list[str]) -> None:
    for subscription_id in ids:
        await _api(
            session,
            service,
            "DELETE",
            f"/api/v1/webhooks/subscriptions/{subscription_id}",
            None,
            204,
        )


async def _create(session: aiohttp.ClientSession, service: Service, entity_id: str) -> None:
    body = {"entityId": entity_id, "status": "online"}
    await _api(session, service, "POST", f"/api/v1/states/{SEED_ENTITY}", body, 201)


async def _probe(
    session: aiohttp.ClientSession,
    service: Service,
    receiver: Receiver,
    hooks: list[str],
    worker: ManagedProcess,
) -> None:
    """One change, delivered to every hook: proves the pipeline is up (and warms it)."""
    entity_id = f"probe-{uuid.uuid4().hex[:12]}"
    await _create(session, service, entity_id)
    deadline = time.perf_counter() + _PROBE_WITHIN
    while time.perf_counter() < deadline:
        if all(entity_id in receiver.hook(name) for name in hooks):
            return
        if worker.process.poll() is not None:
            break
        await asyncio.sleep(0.02)
    raise BenchSetupError(
        f"the probe event did not reach the receiver within {_PROBE_WITHIN:.0f} s:\n"
        f"worker log:\n{worker.log_tail()}"
    )


# -- one backend ---------------------------------------------------------------------


ProgressFn = Callable[[str], None]
RunInPool = Callable[[RawSpec], Awaitable[RawResult]]


class DeliveryBench:
    def __init__(
        self,
        backend: str,
        database_url: str,
        workdir: Path,
        options: DeliveryOptions,
        receiver: Receiver,
        raw: RunInPool,
        progress: ProgressFn,
    ) -> None:
        self.backend = backend
        self.database_url = database_url
        self.workdir = workdir
        self.options = options
        self.receiver = receiver
        self.raw = raw
        self.progress = progress
        self.tag = uuid.uuid4().hex[:8]

    @property
    def separate_worker(self) -> bool:
        return self.backend != "sqlite"

    @property
    def worker_label(self) -> str:
        if self.separate_worker:
            return "`potok-state worker` (NOTIFY)"
        return "embedded in `serve`"

    def _settings(self, *, embedded: bool) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "WEBHOOK_EMBEDDED_WORKER": "true" if embedded else "false",
            "WEBHOOK_WORKER_CONCURRENCY": str(self.options.concurrency),
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        }

    @asynccontextmanager
    async def _writer(self, *, embedded: bool) -> AsyncIterator[Service]:
        async with running_service(self.workdir, self._settings(embedded=embedded)) as service:
            yield service

    @asynccontextmanager
    async def _worker(self) -> AsyncIterator[ManagedProcess]:
        """The one delivery worker: a `potok-state worker` process, or on SQLite a
        second server with its embedded worker (the writer runs without one)."""
        if self.separate_worker:
            async with running_worker(self.workdir, self._settings(embedded=False)) as worker:
                yield worker
        else:
            async with running_service(self.workdir, self._settings(embedded=True)) as service:
                yield service

    # -- change → first attempt -------------------------------------------------------

    async def latency(self, scenario: DeliveryScenario) -> LatencyResult:
        hook = f"{self.tag}-{scenario.key}"
        async with AsyncExitStack() as stack:
            # SQLite: one server, its embedded worker delivers. PostgreSQL: the
            # server without a worker, plus one worker process woken by NOTIFY.
            service = await stack.enter_async_context(
                self._writer(embedded=not self.separate_worker)
            )
            worker: ManagedProcess = service
            if self.separate_worker:
                worker = await stack.enter_async_context(self._worker())
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=32),
                    timeout=aiohttp.ClientTimeout(total=30),
                )
            )
            subscription = await _subscribe(session, service, self.receiver, hook)
            await _probe(session, service, self.receiver, [hook], worker)
            result = await self._timed_writes(session, service, scenario, hook)
            await _unsubscribe(session, service, [subscription])
            if worker.process.poll() is not None:
                raise BenchSetupError(f"the worker died:\n{worker.log_tail()}")
        return result

    async def _timed_writes(
        self,
        session: aiohttp.ClientSession,
        service: Service,
        scenario: DeliveryScenario,
        hook: str,
    ) -> LatencyResult:
        count, rate = self.options.changes, self.options.rate
        duplicates_before = self.receiver.duplicates
        already = len(self.receiver.hook(hook))  # the probe
        ids = [f"lat-{self.tag}-{i:06d}" for i in range(count)]
        timings: dict[str, tuple[float, float]] = {}
        errors: list[str] = []

        async def write(entity_id: str) -> None:
            started = time.perf_counter()
            try:
                await _create(session, service, entity_id)
            except (BenchSetupError, aiohttp.ClientError, TimeoutError) as exc:
                errors.append(str(exc).splitlines()[0][:300])
                return
            timings[entity_id] = (started, time.perf_counter())

        # Open loop: change i starts at t0 + i/rate whatever the earlier ones do.
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        for index, entity_id in enumerate(ids):
            await asyncio.sleep(max(0.0, t0 + index / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(write(entity_id)))
        started_span = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        await self.receiver.wait_for([hook], already + len(timings), within=_SETTLE)

        arrivals = self.receiver.hook(hook)
        after_response, after_request = [], []
        for entity_id, (started, responded) in timings.items():
            arrived = arrivals.get(entity_id)
            if arrived is not None:
                after_response.append((arrived - responded) * 1000)
                after_request.append((arrived - started) * 1000)
        return LatencyResult(
            backend=self.backend,
            scenario=scenario,
            worker=self.worker_label,
            written=len(timings),
            write_errors=len(errors),
            write_rate=(count - 1) / started_span if started_span > 0 else rate,
            after_response_ms=after_response,
            after_request_ms=after_request,
            write_ms=[(done - started) * 1000 for started, done in timings.values()],
            lost=len(timings) - len(after_response),
            duplicates=self.receiver.duplicates - duplicates_before,
            error_sample=errors[0] if errors else "",
        )

    # -- deliveries per second ----------------------------------------------------------

    async def throughput(self, scenario: DeliveryScenario) -> ThroughputResult:
        hooks = [f"{self.tag}-{scenario.key}-{n}" for n in range(scenario.subscriptions)]
        events = max(1, self.options.backlog // len(hooks))
        expected = events * len(hooks)
        duplicates_before = self.receiver.duplicates
        async with AsyncExitStack() as stack:
            service = await stack.enter_async_context(self._writer(embedded=False))
            session = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
            )
            subscriptions = [
                await _subscribe(session, service, self.receiver, hook) for hook in hooks
            ]
            # No worker runs: the backlog waits in the outbox.
            self.progress(f"    queueing {events} events × {len(hooks)} subscription(s) …")
            for start in range(0, events, _BATCH):
                items = [
                    {"entityId": f"bl-{self.tag}-{scenario.key}-{i:07d}", "status": "online"}
                    for i in range(start, min(start + _BATCH, events))
                ]
                await _api(
                    session,
                    service,
                    "POST",
                    f"/api/v1/states/{SEED_ENTITY}/batch",
                    {"items": items, "atomic": True},
                    200,
                )
            raw = [await self._raw_rate(expected)]
            started = time.perf_counter()
            async with self._worker() as worker:
                drained = await self._drain(hooks, expected, worker)
                if worker.process.poll() is not None:
                    raise BenchSetupError(f"the worker died:\n{worker.log_tail()}")
            raw.append(await self._raw_rate(expected))
            await _unsubscribe(session, service, subscriptions)
        first, last, worker_cpu, postgres_cpu, receiver_cpu = drained
        return ThroughputResult(
            backend=self.backend,
            scenario=scenario,
            worker=self.worker_label,
            expected=expected,
            delivered=self.receiver.delivered(hooks),
            duplicates=self.receiver.duplicates - duplicates_before,
            elapsed=last - first,
            first_after_start=first - started,
            raw_rates=[r.rate for r in raw],
            raw_errors=sum(r.errors for r in raw),
            worker_cpu=worker_cpu,
            postgres_cpu=postgres_cpu,
            receiver_cpu=receiver_cpu,
            raw_client_cpu=sum(r.client_cpu for r in raw) / len(raw),
            error_sample=next((r.error_sample for r in raw if r.error_sample), ""),
        )

    async def _drain(
        self, hooks: list[str], expected: int, worker: ManagedProcess
    ) -> tuple[float, float, float, float, float]:
        """Wait for the backlog; (first arrival, last arrival, worker CPU, postgres
        CPU, receiver CPU), CPU in cores over first → last arrival."""
        within = max(60.0, expected / 20)
        if not await self.receiver.wait_for(hooks, 1, within=within):
            raise BenchSetupError(
                f"no delivery within {within:.0f} s of the worker's start:\n{worker.log_tail()}"
            )
        first = min(arrived for name in hooks for arrived in self.receiver.hook(name).values())
        cpu_worker, cpu_pg = process_cpu_seconds(worker.pid), postgres_cpu_seconds()
        cpu_self, cpu_at = time.process_time(), time.perf_counter()
        await self.receiver.wait_for(hooks, expected, within=within, stall=_STALL)
        window = time.perf_counter() - cpu_at
        worker_cpu = (process_cpu_seconds(worker.pid) - cpu_worker) / window
        postgres_cpu = max(0.0, postgres_cpu_seconds() - cpu_pg) / window
        receiver_cpu = (time.process_time() - cpu_self) / window
        last = max(arrived for name in hooks for arrived in self.receiver.hook(name).values())
        return first, last, worker_cpu, postgres_cpu, receiver_cpu

    async def _raw_rate(self, count: int) -> RawResult:
        body, headers = _sample_body()
        spec = RawSpec(
            url=f"{self.receiver.base_url}/raw",
            concurrency=self.options.concurrency,
            count=count,
            body=body,
            headers=headers,
            warmup=2 * self.options.concurrency,
            time_limit=60.0,
        )
        result = await self.raw(spec)
        self.progress(
            f"    raw aiohttp POST: {result.rate:8.1f}/s ({result.requests} in "
            f"{result.elapsed:.2f} s, errors {result.errors})"
        )
        return result


async def measure(
    backend: str,
    database_url: str,
    workdir: Path,
    scenarios: list[DeliveryScenario],
    options: DeliveryOptions,
    pool: ProcessPoolExecutor,
    progress: ProgressFn,
) -> DeliveryResults:
    """Every selected webhook scenario on one backend (its database already migrated)."""
    results = DeliveryResults()
    loop = asyncio.get_running_loop()

    async def raw(spec: RawSpec) -> RawResult:
        return await loop.run_in_executor(pool, raw_post_rate, spec)

    async with Receiver().running() as receiver:
        bench = DeliveryBench(backend, database_url, workdir, options, receiver, raw, progress)
        for scenario in scenarios:
            progress(f"[{backend}/webhooks] {scenario.title} …")
            if scenario.latency:
                latency = await bench.latency(scenario)
                results.latencies.append(latency)
                progress(
                    f"    {latency.written} changes at {latency.write_rate:.0f}/s: arrival − "
                    f"response p50 {percentile(latency.after_response_ms, 50):.1f} ms "
                    f"p99 {percentile(latency.after_response_ms, 99):.1f} ms, "
                    f"lost {latency.lost}, write errors {latency.write_errors}"
                )
            else:
                throughput = await bench.throughput(scenario)
                results.throughputs.append(throughput)
                ratio = throughput.ratio
                progress(
                    f"    {throughput.delivered}/{throughput.expected} delivered in "
                    f"{throughput.elapsed:.2f} s: {throughput.rate:.1f}/s vs raw "
                    f"{throughput.raw_rate:.1f}/s = {ratio or 0:.2f}×, worker CPU "
                    f"{throughput.worker_cpu:.2f}, lost {throughput.lost}"
                )
        if receiver.malformed:
            results.notes.append(
                f"{backend}: the receiver got {receiver.malformed} deliveries it could not parse."
            )
    return results
