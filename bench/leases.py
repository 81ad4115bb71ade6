"""Lease lapse figures of bench/README.md, against the real service (1 uvicorn worker).

Heartbeats per second are an ordinary request row of the *no cache* profile
(`heartbeat` in scenarios.py); the report shows that row again in its *Leases*
section. This module measures lapses:

* `--leases` (10,000) `service` states (status `up`) get deadlines within about
  a second, `--lease-ttl` (3) s away, in one of two ways:
  `lease_lapse`: the states are created first with a long lease and their
  `entity.created` deliveries are awaited; then one round of batch heartbeats
  (`POST /states/service/heartbeat`, 1000 ids each, every request sent at once)
  sets the short ttl. `lease_lapse_create`: the states are created with the short
  ttl (atomic 1000-item batches, every request sent at once), so their
  `entity.created` deliveries are still on their way as the leases lapse.
  Each state's deadline is the `lease.expiresAt` of the answer.
* The server's reaper applies each lapse as a change (`up → down`, reason `lease
  expired`); the change feed (`GET /api/v1/changes`) gives each one's commit
  `timestamp`: lateness = timestamp − deadline. A receiver in this process,
  subscribed to `entity.*` on `service`, notes the arrival of each lapse delivery.

One server per scenario (`serve`, one uvicorn worker, every setting at its
default: the embedded webhook worker delivers); its CPU is sampled every 0.1 s
and reported over first deadline → last lapse and → last delivery. The server's
times are the host's clock (SQLite) or the database's (PostgreSQL, on this
host); this process reads `time.time()`: one clock.

One file on purpose: each measurement's setup, load and timing read top to bottom,
next to the receiver (`LapseReceiver`) and CPU timeline they share.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.load import LEASE_ENTITY, machine_ticks, tree_and_postgres_cpu_seconds
from bench.scenarios import LeaseScenario
from bench.server import BENCH_API_KEY, BenchSetupError, Service, running_service
from bench.watchers import Spread
from bench.webhooks import LOOPBACK, listening

LAPSE_REASON = "lease expired"
_API_HEADERS = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}
_BATCH = 1000
"""Items per atomic batch and ids per batch heartbeat (the API's maximum)."""
_PAGE = 1000
_SAMPLE_SECONDS = 0.1
_STALL = 30.0
"""After the last deadline, waiting stops when no lapse delivery arrived for this long."""
_LOG_SAMPLES = 12
_LOG_EVENT = re.compile(r'"event":\s*"([^"]+)"')
_METRIC = re.compile(
    rb"^(potok_lease_\w+_total|potok_webhook_deliveries_total)\{([^}]*)\} ([0-9.e+-]+)$", re.M
)


@dataclass(frozen=True)
class LeaseOptions:
    leases: int
    """States whose leases lapse together."""
    ttl: int
    """The short lease, s: the deadlines are this far from the requests that set them."""
    hold_ttl: int = 600
    """`lease_lapse`: the lease the states are created with, while their creation
    events are delivered (longer than that can take)."""


def _epoch(timestamp: str) -> float:
    """An API timestamp (`2025-11-10T10:00:00.000Z`) as seconds since the epoch."""
    return datetime.fromisoformat(timestamp).timestamp()


# -- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCpu:
    """Cores (1.00 = one core busy) over one window."""

    seconds: float
    server: float
    """The server's process tree (one uvicorn worker, its embedded webhook worker)."""
    postgres: float
    bench: float
    """This process: the receiver (and the sampler)."""
    machine_busy: float


@dataclass(frozen=True)
class LogSummary:
    """What the server logged (LOG_LEVEL=warning: any line is worth a look)."""

    lines: int = 0
    events: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)


@dataclass
class LapseResult:
    backend: str
    scenario: LeaseScenario
    leases: int
    """States given a deadline (the answers that showed one)."""
    ttl: int
    setup_seconds: float
    """From the first request that set a deadline to the last answer."""
    setup_errors: int
    deadline_spread: float
    """Last − first deadline, s."""
    lapsed: int
    """States with a lapse event in the change feed."""
    duplicates: int
    """Lapse events beyond the first of a state (must be 0)."""
    early: int
    """Lapses committed before their deadline (must be 0)."""
    lateness: Spread
    """Lapse event timestamp − deadline, ms."""
    first_lapse: float
    """First lapse − first deadline, s."""
    last_lapse: float
    """Last lapse − last deadline, s."""
    timestamps: int
    """Distinct timestamps among the lapse events (a change set's changes share one)."""
    delivered: int
    """States whose lapse delivery reached the receiver."""
    delivery_duplicates: int
    delivery_lateness: Spread
    """Arrival of the lapse delivery − deadline, ms."""
    all_delivered: float
    """Last lapse delivery − last deadline, s (nan: none arrived)."""
    created_delivered: int
    """`entity.created` deliveries of these states that arrived."""
    created_done: float
    """`lease_lapse`: creation → last `entity.created` delivery, s (before the
    deadlines were set); `lease_lapse_create`: last `entity.created` delivery −
    last deadline, s."""
    cpu_lapse: WindowCpu | None
    """First deadline → last lapse."""
    cpu_delivery: WindowCpu | None
    """First deadline → last lapse delivery."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Lease and delivery counters of /metrics, their change over the scenario."""
    log: LogSummary = field(default_factory=LogSummary)
    error_sample: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Lapse deliveries that never arrived."""
        return self.leases - self.delivered

    @property
    def missing(self) -> int:
        """States given a deadline that never lapsed."""
        return self.leases - self.lapsed

    def to_json(self) -> dict[str, Any]:
        def cpu(window: WindowCpu | None) -> dict[str, float] | None:
            return None if window is None else vars(window)

        def finite(value: float) -> float | None:
            return None if value != value else value

        return {
            "backend": self.backend,
            "scenario": self.scenario.key,
            "setup": self.scenario.setup,
            "leases": self.leases,
            "ttl": self.ttl,
            "setup_seconds": self.setup_seconds,
            "setup_errors": self.setup_errors,
            "deadline_spread": self.deadline_spread,
            "lapsed": self.lapsed,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "early": self.early,
            "lateness_ms": self.lateness.to_json(),
            "first_lapse": finite(self.first_lapse),
            "last_lapse": finite(self.last_lapse),
            "timestamps": self.timestamps,
            "delivered": self.delivered,
            "lost": self.lost,
            "delivery_duplicates": self.delivery_duplicates,
            "delivery_lateness_ms": self.delivery_lateness.to_json(),
            "all_delivered": finite(self.all_delivered),
            "created_delivered": self.created_delivered,
            "created_done": finite(self.created_done),
            "cpu_lapse": cpu(self.cpu_lapse),
            "cpu_delivery": cpu(self.cpu_delivery),
            "metrics": self.metrics,
            "log_lines": self.log.lines,
            "log_events": self.log.events,
            "log_samples": self.log.samples,
            "error_sample": self.error_sample,
            "notes": self.notes,
        }


# -- the receiver ---------------------------------------------------------------------


class LapseReceiver:
    """An aiohttp server on 127.0.0.1 answering 200 to every delivery; notes the
    first arrival (`time.time()`) of each state's lapse and counts the rest."""

    def __init__(self) -> None:
        self.lapses: dict[str, float] = {}
        self.lapse_duplicates = 0
        self.created: dict[str, float] = {}
        self.other = 0
        self.malformed = 0
        self.last_lapse = 0.0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hook"

    async def _on_hook(self, request: web.Request) -> web.Response:
        arrived = time.time()
        body = await request.read()
        try:
            payload = orjson.loads(body)
            event, data = str(payload["event"]), payload["data"]
            entity_id = str(data["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.malformed += 1
            return web.Response(status=200)
        if event == "entity.updated" and data.get("reason") == LAPSE_REASON:
            if entity_id in self.lapses:
                self.lapse_duplicates += 1
            else:
                self.lapses[entity_id] = arrived
                self.last_lapse = arrived
        elif event == "entity.created":
            self.created.setdefault(entity_id, arrived)
        else:
            self.other += 1
        return web.Response(status=200)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LapseReceiver]:
        app = web.Application()
        app.router.add_post("/hook", self._on_hook)
        async with listening(app) as self.port:
            yield self

    async def wait(
        self, found: Callable[[], int], count: int, *, until: float, quiet_from: float
    ) -> bool:
        """Until `found()` reaches `count`; at most until `until` (epoch s), and
        after `quiet_from` at most `_STALL` s without progress."""
        last_count, last_change = -1, time.time()
        while (now := time.time()) < until:
            current = found()
            if current >= count:
                return True
            if current != last_count:
                last_count, last_change = current, now
            elif now > quiet_from and now - max(last_change, quiet_from) > _STALL:
                return False
            await asyncio.sleep(0.01)
        return False


# -- CPU over time ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    at: float
    """`time.time()`."""
    server: float
    postgres: float
    bench: float
    busy: int
    total: int


class CpuTimeline:
    """CPU counters sampled every `_SAMPLE_SECONDS`, so that windows known only
    afterwards (first deadline → last lapse) can be measured."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.samples: list[_Sample] = []

    def sample(self) -> None:
        server, postgres = tree_and_postgres_cpu_seconds(self.server_pid)
        busy, total = machine_ticks()
        self.samples.append(
            _Sample(time.time(), server, postgres, time.process_time(), busy, total)
        )

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(_SAMPLE_SECONDS)

    def between(self, start: float, end: float) -> WindowCpu | None:
        """From the last sample at or before `start` to the first at or after `end`."""
        times = [s.at for s in self.samples]
        if len(times) < 2 or end != end:
            return None
        first = self.samples[max(0, bisect_right(times, start) - 1)]
        last = self.samples[min(len(times) - 1, bisect_left(times, end))]
        wall = last.at - first.at
        if wall <= 0:
            return None
        return WindowCpu(
            seconds=wall,
            server=max(0.0, last.server - first.server) / wall,
            postgres=max(0.0, last.postgres - first.postgres) / wall,
            bench=(last.bench - first.bench) / wall,
            machine_busy=(last.busy - first.busy) / (last.total - first.total)
            if last.total > first.total
            else 0.0,
        )


# -- talking to the service ------------------------------------------------------------


async def _api(
    session: aiohttp.ClientSession,
    service: Service,
    method: str,
    path: str,
    body: object | None,
    expect: int,
) -> Any:
    data = orjson.dumps(body) if body is not None else None
    async with session.request(
        method, service.base_url + path, data=data, headers=_API_HEADERS
    ) as response:
        payload = await response.read()
        if response.status != expect:
            raise BenchSetupError(
                f"{method} {path}: HTTP {response.status} (expected {expect}): "
                f"{payload[:500].decode(errors='replace')}\nserver log:\n{service.log_tail()}"
            )
        return orjson.loads(payload) if payload else None


async def lease_metrics(session: aiohttp.ClientSession, service: Service) -> dict[str, float]:
    """The lease counters and webhook delivery outcomes of /metrics."""
    async with session.get(f"{service.base_url}/metrics") as response:
        text = await response.read()
    return {
        f"{name.decode()}{{{labels.decode()}}}": float(value)
        for name, labels, value in _METRIC.findall(text)
    }


def _metrics_change(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    changed = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: value for key, value in sorted(changed.items()) if value}


def read_log(log_path: Path) -> LogSummary:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line]
    except OSError:
        return LogSummary()
    events: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for line in lines:
        found = _LOG_EVENT.search(line)
        event = found.group(1) if found else line[:80]
        events[event] += 1
        samples.setdefault(event, line[:400])
    return LogSummary(len(lines), dict(events.most_common()), list(samples.values())[:_LOG_SAMPLES])


@dataclass
class _Deadlines:
    """What the requests that set the deadlines answered."""

    at: dict[str, float] = field(default_factory=dict)
    """Deadline (epoch s) by entity id."""
    revisions: list[int] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    errors: int = 0
    error_sample: str = ""

    def failed(self, error: str) -> None:
        self.errors += 1
        self.error_sample = self.error_sample or error[:300]


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[start : start + _BATCH] for start in range(0, len(ids), _BATCH)]


ProgressFn = Callable[[str], None]


class LeaseBench:
    def __init__(
        self,
        backend: str,
        database_url: str,
        workdir: Path,
        options: LeaseOptions,
        progress: ProgressFn,
    ) -> None:
        self.backend = backend
        self.database_url = database_url
        self.workdir = workdir
        self.options = options
        self.progress = progress
        self.tag = uuid.uuid4().hex[:8]

    def _settings(self) -> dict[str, str]:
        # Loopback targets are allowed outside production anyway; said explicitly.
        return {"DATABASE_URL": self.database_url, "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}

    async def _create(
        self, session: aiohttp.ClientSession, service: Service, ids: list[str], ttl: int
    ) -> _Deadlines:
        """Atomic batches of new `up` states with a lease of `ttl`, all sent at once."""
        found = _Deadlines(started=time.time())
        path = f"/api/v1/states/{LEASE_ENTITY}/batch"

        async def batch(chunk: list[str]) -> None:
            items = [{"entityId": i, "status": "up", "ttl": ttl} for i in chunk]
            try:
                answer = await _api(
                    session, service, "POST", path, {"items": items, "atomic": True}, 200
                )
            except (BenchSetupError, aiohttp.ClientError, TimeoutError) as exc:
                found.failed(str(exc).splitlines()[0])
                return
            for item in answer["items"]:
                state = item.get("state") or {}
                lease = state.get("lease")
                if not item.get("ok") or lease is None:
                    found.failed(f"{item.get('entityId')}: {item.get('error') or 'no lease'}")
                    continue
                found.at[str(item["entityId"])] = _epoch(lease["expiresAt"])
                found.revisions.append(int(state["revision"]))

        await asyncio.gather(*(batch(chunk) for chunk in _chunks(ids)))
        found.finished = time.time()
        return found

    async def _heartbeats(
        self, session: aiohttp.ClientSession, service: Service, ids: list[str], ttl: int
    ) -> _Deadlines:
        """One round of batch heartbeats with `ttl`, every request sent at once."""
        found = _Deadlines(started=time.time())
        path = f"/api/v1/states/{LEASE_ENTITY}/heartbeat"

        async def heartbeat(chunk: list[str]) -> None:
            try:
                answer = await _api(session, service, "POST", path, {"ids": chunk, "ttl": ttl}, 200)
            except (BenchSetupError, aiohttp.ClientError, TimeoutError) as exc:
                found.failed(str(exc).splitlines()[0])
                return
            for item in answer["items"]:
                lease = item.get("lease")
                if not item.get("ok") or lease is None:
                    found.failed(f"{item.get('entityId')}: {item.get('error')}")
                    continue
                found.at[str(item["entityId"])] = _epoch(lease["expiresAt"])

        await asyncio.gather(*(heartbeat(chunk) for chunk in _chunks(ids)))
        found.finished = time.time()
        return found

    async def _lapse_events(
        self, session: aiohttp.ClientSession, service: Service, after: int, ids: set[str]
    ) -> dict[str, list[float]]:
        """Every lapse event of these states in the change feed after `after`:
        their timestamps (epoch s) by entity id."""
        lapses: dict[str, list[float]] = {}
        while True:
            page = await _api(
                session, service, "GET", f"/api/v1/changes?after={after}&limit={_PAGE}", None, 200
            )
            for item in page["items"]:
                data = item.get("data") or {}
                entity_id = str(data.get("id"))
                if (
                    item.get("event") == "entity.updated"
                    and data.get("reason") == LAPSE_REASON
                    and entity_id in ids
                ):
                    lapses.setdefault(entity_id, []).append(_epoch(item["timestamp"]))
            if not page["items"] or int(page["nextAfter"]) <= after:
                return lapses
            after = int(page["nextAfter"])

    async def lapse(self, scenario: LeaseScenario) -> LapseResult:
        options = self.options
        ids = [f"lapse-{self.tag}-{scenario.setup[0]}-{i:06d}" for i in range(options.leases)]
        async with AsyncExitStack() as stack:
            receiver = await stack.enter_async_context(LapseReceiver().running())
            service = await stack.enter_async_context(
                running_service(self.workdir, self._settings())
            )
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=32),
                    timeout=aiohttp.ClientTimeout(total=300),
                )
            )
            subscription = await _api(
                session,
                service,
                "POST",
                "/api/v1/webhooks/subscriptions",
                {
                    "url": receiver.url,
                    "events": ["entity.*"],
                    "entityTypes": [LEASE_ENTITY],
                    "description": "bench leases",
                },
                201,
            )
            metrics_before = await lease_metrics(session, service)
            timeline = CpuTimeline(service.pid)
            sampler = asyncio.create_task(timeline.run())
            try:
                result = await self._measure(scenario, service, session, receiver, timeline, ids)
            finally:
                sampler.cancel()
                with suppress(asyncio.CancelledError):
                    await sampler
            result.metrics = _metrics_change(metrics_before, await lease_metrics(session, service))
            await _api(
                session,
                service,
                "DELETE",
                f"/api/v1/webhooks/subscriptions/{subscription['id']}",
                None,
                204,
            )
            if service.process.poll() is not None:
                raise BenchSetupError(f"the service died:\n{service.log_tail()}")
        result.log = read_log(service.log_path)
        if receiver.malformed or receiver.other:
            result.notes.append(
                f"the receiver got {receiver.malformed} deliveries it could not parse and "
                f"{receiver.other} other events"
            )
        return result

    async def _measure(
        self,
        scenario: LeaseScenario,
        service: Service,
        session: aiohttp.ClientSession,
        receiver: LapseReceiver,
        timeline: CpuTimeline,
        ids: list[str],
    ) -> LapseResult:
        options = self.options
        count = len(ids)
        if scenario.setup == "heartbeat":
            self.progress(f"    creating {count:,} states (ttl {options.hold_ttl} s) …")
            created = await self._create(session, service, ids, options.hold_ttl)
            await receiver.wait(
                lambda: len(receiver.created),
                len(created.at),
                until=time.time() + max(60.0, count / 50),
                quiet_from=time.time(),
            )
            created_done = max(receiver.created.values(), default=float("nan")) - created.started
            self.progress(
                f"    {len(receiver.created):,} entity.created delivered {created_done:.2f} s "
                f"after the first batch; heartbeats with ttl {options.ttl} …"
            )
            deadlines = await self._heartbeats(session, service, list(created.at), options.ttl)
            revisions = created.revisions
        else:
            self.progress(f"    creating {count:,} states with ttl {options.ttl} s …")
            deadlines = await self._create(session, service, ids, options.ttl)
            revisions = deadlines.revisions
            created_done = float("nan")
        if not deadlines.at:
            raise BenchSetupError(f"no lease was set: {deadlines.error_sample}")
        first, last = min(deadlines.at.values()), max(deadlines.at.values())
        self.progress(
            f"    {len(deadlines.at):,} deadlines within {last - first:.3f} s, set in "
            f"{deadlines.finished - deadlines.started:.2f} s (errors {deadlines.errors}); "
            f"first in {first - time.time():.2f} s"
        )
        await receiver.wait(
            lambda: len(receiver.lapses),
            len(deadlines.at),
            until=last + max(60.0, count / 50),
            quiet_from=last,
        )
        timeline.sample()
        events = await self._lapse_events(session, service, min(revisions) - 1, set(deadlines.at))
        if scenario.setup == "create":
            created_done = max(receiver.created.values(), default=float("nan")) - last
        return self._result(
            scenario, deadlines, events, receiver, timeline, created_done, len(receiver.created)
        )

    def _result(
        self,
        scenario: LeaseScenario,
        deadlines: _Deadlines,
        events: dict[str, list[float]],
        receiver: LapseReceiver,
        timeline: CpuTimeline,
        created_done: float,
        created_delivered: int,
    ) -> LapseResult:
        due = deadlines.at
        first, last = min(due.values()), max(due.values())
        lateness = [(times[0] - due[i]) * 1000 for i, times in events.items()]
        stamps = [t for times in events.values() for t in times]
        arrivals = {i: at for i, at in receiver.lapses.items() if i in due}
        last_lapse = max(stamps, default=float("nan"))
        last_delivery = max(arrivals.values(), default=float("nan"))
        return LapseResult(
            backend=self.backend,
            scenario=scenario,
            leases=len(due),
            ttl=self.options.ttl,
            setup_seconds=deadlines.finished - deadlines.started,
            setup_errors=deadlines.errors,
            deadline_spread=last - first,
            lapsed=len(events),
            duplicates=sum(len(times) - 1 for times in events.values()),
            early=sum(1 for late in lateness if late < 0),
            lateness=Spread.of(lateness),
            first_lapse=min(stamps, default=float("nan")) - first,
            last_lapse=last_lapse - last,
            timestamps=len(set(stamps)),
            delivered=len(arrivals),
            delivery_duplicates=receiver.lapse_duplicates,
            delivery_lateness=Spread.of([(at - due[i]) * 1000 for i, at in arrivals.items()]),
            all_delivered=last_delivery - last,
            created_delivered=created_delivered,
            created_done=created_done,
            cpu_lapse=timeline.between(first, last_lapse),
            cpu_delivery=timeline.between(first, last_delivery),
            error_sample=deadlines.error_sample,
        )


def _progress_result(progress: ProgressFn, r: LapseResult) -> None:
    cpu = r.cpu_delivery
    progress(
        f"    lapsed {r.lapsed:,}/{r.leases:,} (duplicates {r.duplicates}, early {r.early}, "
        f"{r.timestamps} timestamps): late p50 {r.lateness.p50:.0f} ms p99 {r.lateness.p99:.0f} ms "
        f"max {r.lateness.max:.0f} ms; delivered {r.delivered:,} (lost {r.lost}), the last "
        f"{r.all_delivered:.2f} s after the last deadline; server CPU "
        f"{cpu.server if cpu else float('nan'):.2f}"
    )


async def measure(
    backend: str,
    database_url: str,
    workdir: Path,
    scenarios: list[LeaseScenario],
    options: LeaseOptions,
    progress: ProgressFn,
) -> list[LapseResult]:
    """Every selected lapse scenario on one backend (its database already
    migrated), each against a server of its own."""
    bench = LeaseBench(backend, database_url, workdir, options, progress)
    results = []
    for scenario in scenarios:
        progress(f"[{backend}/leases] {options.leases:,} leases lapsing, {scenario.title} …")
        result = await bench.lapse(scenario)
        _progress_result(progress, result)
        if result.log.lines:
            progress(f"    server log: {result.log.lines} lines: {result.log.events}")
        results.append(result)
    return results
