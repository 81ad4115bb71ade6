"""The load generator: N concurrent aiohttp workers against the running server.

It runs in its own process (the runner submits `drive` to a one-process pool), so
that the server and the generator compete for the machine's cores the same way
in every scenario, the ceiling included, and the ratios stay comparable.

Two modes: a fixed duration with `concurrency` workers looping (req/s and
latency), or a fixed count of sequential requests (latency of heavy requests
such as a 1000-item batch). Requests are built in this process from a
picklable `Workload`, so the runner never ships bodies across processes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import aiohttp
import orjson

USER_STATUSES = ("online", "offline", "busy")
SEED_ENTITY = "user"
"""Entity type of every scenario: its table allows any status → any status, so
every PUT and batch item is a valid change."""
LEASE_ENTITY = "service"
"""Entity type of the heartbeat row and the lease lapses: the built-in `service`
table (lease default `{ttl: 15, onExpire: down}`)."""
LEASE_SEED_TTL = 3600
"""Lease of the seeded `service` states, s: long enough that none lapses in a run."""
DEFINED_ENTITY = "bench_defined"
SCHEMA_ENTITY = "bench_schema"
"""Types defined over the API with the same table (`user`'s), the second with a
10-property metadataSchema (bench/machines.py): their PUT rows differ only by it."""
HISTORY_ENTITY_ID = "history-000000"
"""The `user` state the as-of rows read, with HISTORY_CHANGES changes."""


class RequestKind(StrEnum):
    LIVENESS = "liveness"
    GET_STATE = "get_state"
    LIST_STATES = "list_states"
    CREATE = "create"
    PUT = "put"
    BATCH_CREATE = "batch_create"
    BATCH_UPDATE = "batch_update"
    HEARTBEAT = "heartbeat"
    PUT_DEFINED = "put_defined"
    PUT_SCHEMA = "put_schema"
    AS_OF_REVISION = "as_of_revision"
    AS_OF_TIME = "as_of_time"
    HISTORY_PAGE = "history_page"


@dataclass(frozen=True)
class Workload:
    kind: RequestKind
    base_url: str
    api_key: str
    seeded_ids: int
    tag: str
    """Unique per scenario run, so created entity ids never collide."""
    batch_size: int = 1000
    as_of_revisions: tuple[int, int] = (0, 0)
    """The first and last revision of the as-of rows' entity."""
    as_of_times: tuple[str, ...] = ()
    """Commit times of its changes, spread over its life."""
    history_entity: str = ""
    """HISTORY_PAGE: the entity whose history is paged, `history_pages` pages of
    `history_page` changes after revision `history_from`, walked in turn."""
    history_from: int = 0
    history_page: int = 100
    history_pages: int = 1


@dataclass(frozen=True)
class LoadSpec:
    workload: Workload
    server_pid: int
    """The `serve` process: its CPU and its descendants' is the server's."""
    concurrency: int
    duration: float = 0.0
    warmup: float = 0.0
    count: int = 0
    """When > 0: send `count` requests one after another (after `warmup_count`)
    instead of looping for `duration`."""
    warmup_count: int = 0


@dataclass
class LoadResult:
    requests: int
    errors: int
    elapsed: float
    latencies_ms: list[float]
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_sample: str = ""
    server_cpu: float = 0.0
    """CPU of the server's whole process tree (the uvicorn parent and, with
    `--workers N`, its worker processes) over the measured window, in cores
    (1.0 = one core busy)."""
    client_cpu: float = 0.0
    postgres_cpu: float = 0.0
    """All `postgres` processes on the machine, in cores (includes other users)."""
    machine_busy: float = 0.0
    """Busy share of all cores (0..1), everything on the machine."""

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the successful requests' latencies, ms."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        rank = max(1, round(p / 100 * len(ordered) + 0.5))
        return ordered[min(rank, len(ordered)) - 1]


# -- requests -------------------------------------------------------------------


def seed_id(index: int) -> str:
    return f"seed-{index:06d}"


def lease_seed_id(index: int) -> str:
    """The seeded `service` states the heartbeat row renews."""
    return f"svc-{index:06d}"


def ten_keys(worker: int, seq: int) -> dict[str, object]:
    """Metadata of the schema rows: 10 keys, alternately integers and strings."""
    return {f"k{i}": (worker + seq + i) if i % 2 == 0 else f"value-{seq % 97}" for i in range(10)}


def _own_slice(work: Workload, worker: int, seq: int, workers: int) -> int:
    """A seeded index of `worker`'s own slice: concurrent workers never write the
    same row, so they never queue on one row lock."""
    per_worker = max(1, work.seeded_ids // workers)
    return (worker + workers * (seq % per_worker)) % work.seeded_ids


def build_request(work: Workload, worker: int, seq: int, workers: int) -> tuple[str, str, bytes]:
    """The (method, path, body) of request `seq` of `worker`.

    PUTs and heartbeats of one worker touch only its own slice of the seeded ids,
    so concurrent workers never queue on one row lock: the bench measures the
    write path, not contention on a single entity."""
    base = f"/api/v1/states/{SEED_ENTITY}"
    match work.kind:
        case RequestKind.LIVENESS:
            return "GET", "/health/liveness", b""
        case RequestKind.GET_STATE:
            index = (worker * 7919 + seq * 104_729) % work.seeded_ids
            return "GET", f"{base}/{seed_id(index)}", b""
        case RequestKind.LIST_STATES:
            status = USER_STATUSES[seq % len(USER_STATUSES)]
            return "GET", f"{base}?status={status}&limit=50", b""
        case RequestKind.CREATE:
            created = {"entityId": f"new-{work.tag}-{worker}-{seq}", "status": "online"}
            return "POST", base, orjson.dumps(created)
        case RequestKind.PUT:
            index = _own_slice(work, worker, seq, workers)
            body: dict[str, object] = {
                "status": USER_STATUSES[(seq + worker) % len(USER_STATUSES)],
                "metadata": {"worker": worker, "seq": seq},
            }
            return "PUT", f"{base}/{seed_id(index)}", orjson.dumps(body)
        case RequestKind.PUT_DEFINED | RequestKind.PUT_SCHEMA:
            entity = DEFINED_ENTITY if work.kind is RequestKind.PUT_DEFINED else SCHEMA_ENTITY
            index = _own_slice(work, worker, seq, workers)
            body = {
                "status": USER_STATUSES[(seq + worker) % len(USER_STATUSES)],
                "metadata": ten_keys(worker, seq),
            }
            return "PUT", f"/api/v1/states/{entity}/{seed_id(index)}", orjson.dumps(body)
        case RequestKind.AS_OF_REVISION:
            first, last = work.as_of_revisions
            revision = first + (worker * 7919 + seq * 104_729) % (last - first + 1)
            return "GET", f"{base}/{HISTORY_ENTITY_ID}?asOf={revision}", b""
        case RequestKind.AS_OF_TIME:
            times = work.as_of_times
            when = times[(worker * 7919 + seq * 104_729) % len(times)]
            return "GET", f"{base}/{HISTORY_ENTITY_ID}?asOf={when}", b""
        case RequestKind.HEARTBEAT:
            # No body: the lease's own ttl (LEASE_SEED_TTL).
            state = lease_seed_id(_own_slice(work, worker, seq, workers))
            return "POST", f"/api/v1/states/{LEASE_ENTITY}/{state}/heartbeat", b""
        case RequestKind.HISTORY_PAGE:
            # The cursor the previous page's answer would give (a revision).
            page = seq % work.history_pages
            path = f"{base}/{work.history_entity}/history?limit={work.history_page}"
            if page:
                after = str(work.history_from + page * work.history_page).encode()
                path += "&cursor=" + base64.urlsafe_b64encode(after).rstrip(b"=").decode()
            return "GET", path, b""
        case RequestKind.BATCH_CREATE:
            items = [
                {"entityId": f"batch-{work.tag}-{seq}-{i}", "status": USER_STATUSES[i % 3]}
                for i in range(work.batch_size)
            ]
            return "POST", f"{base}/batch", orjson.dumps({"items": items, "atomic": True})
        case RequestKind.BATCH_UPDATE:
            updates: list[dict[str, object]] = [
                {
                    "entityId": seed_id(i),
                    "status": USER_STATUSES[(i + seq) % 3],
                    "metadata": {"batch": seq},
                }
                for i in range(min(work.batch_size, work.seeded_ids))
            ]
            return "POST", f"{base}/batch", orjson.dumps({"items": updates, "atomic": True})
    raise AssertionError(f"unknown request kind {work.kind}")


# -- CPU accounting (Linux /proc) -------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcStat(NamedTuple):
    """The fields of `/proc/<pid>/stat` the bench uses."""

    pid: int
    name: str
    state: str
    ppid: int
    ticks: int
    """utime + stime, in clock ticks."""
    started: int
    """Start time after boot, in clock ticks: with the pid, names one process."""


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            raw = stat.read()
    except OSError:
        return None
    name = raw[raw.find("(") + 1 : raw.rfind(")")]
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return ProcStat(
            pid,
            name,
            fields[0],
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
            int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def all_processes() -> list[ProcStat]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            found.append(stat)
    return found


def process_tree(root: int, processes: list[ProcStat] | None = None) -> list[ProcStat]:
    """`root` and every process descending from it (root first; empty when it is
    gone). The kernel here has no `/proc/<pid>/task/*/children`, so the tree is
    built from every process's parent pid."""
    processes = all_processes() if processes is None else processes
    children: dict[int, list[ProcStat]] = {}
    top = None
    for stat in processes:
        children.setdefault(stat.ppid, []).append(stat)
        if stat.pid == root:
            top = stat
    if top is None:
        return []
    tree, pending = [top], [top.pid]
    while pending:
        for child in children.get(pending.pop(), []):
            tree.append(child)
            pending.append(child.pid)
    return tree


def _ticks(root: int) -> tuple[int, int]:
    """(ticks of `root`'s process tree, ticks of every `postgres` process), one /proc walk.

    A server started with `--workers N` is a uvicorn parent and N worker
    processes (plus multiprocessing's resource tracker): all of it is the server."""
    processes = all_processes()
    tree = sum(stat.ticks for stat in process_tree(root, processes))
    postgres = sum(stat.ticks for stat in processes if stat.name == "postgres")
    return tree, postgres


def process_cpu_seconds(pid: int) -> float:
    """CPU (user + system) a process has used so far, in seconds."""
    stat = read_stat(pid)
    return stat.ticks / _TICKS if stat is not None else 0.0


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU used so far by a process and every live process descending from it, s."""
    return sum(stat.ticks for stat in process_tree(pid)) / _TICKS


def tree_and_postgres_cpu_seconds(root: int) -> tuple[float, float]:
    """(CPU of `root`'s process tree, CPU of every `postgres` process) used so far,
    in seconds, from one walk of /proc."""
    tree, postgres = _ticks(root)
    return tree / _TICKS, postgres / _TICKS


def postgres_cpu_seconds() -> float:
    """CPU used so far by every `postgres` process on the machine, in seconds."""
    return sum(s.ticks for s in all_processes() if s.name == "postgres") / _TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class _CpuSnapshot:
    at: float
    server: int
    client: float
    postgres: int
    machine_busy: int
    machine_total: int

    @classmethod
    def take(cls, server_pid: int) -> _CpuSnapshot:
        server, postgres = _ticks(server_pid)
        busy, total = machine_ticks()
        return cls(
            at=time.perf_counter(),
            server=server,
            client=time.process_time(),
            postgres=postgres,
            machine_busy=busy,
            machine_total=total,
        )


def _apply_cpu(result: LoadResult, start: _CpuSnapshot, end: _CpuSnapshot) -> None:
    wall = end.at - start.at
    if wall <= 0:
        return
    # Clamped: a server process that exits inside the window takes its ticks along.
    result.server_cpu = max(0.0, (end.server - start.server) / _TICKS / wall)
    result.client_cpu = (end.client - start.client) / wall
    # Clamped: a postgres backend that exits inside the window takes its ticks along.
    result.postgres_cpu = max(0.0, (end.postgres - start.postgres) / _TICKS / wall)
    if end.machine_total > start.machine_total:
        result.machine_busy = (end.machine_busy - start.machine_busy) / (
            end.machine_total - start.machine_total
        )


# -- the generator ----------------------------------------------------------------


class _Tally:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.requests = 0
        self.errors = 0
        self.error_kinds: Counter[str] = Counter()
        self.error_sample = ""
        self.last_done = 0.0

    def error(self, kind: str, sample: str) -> None:
        self.errors += 1
        self.error_kinds[kind] += 1
        if not self.error_sample:
            self.error_sample = f"{kind}: {sample[:300]}"


async def _send(
    session: aiohttp.ClientSession,
    work: Workload,
    headers: dict[str, str],
    request: tuple[str, str, bytes],
) -> tuple[int, bytes]:
    method, path, body = request
    async with session.request(
        method, work.base_url + path, data=body or None, headers=headers
    ) as response:
        return response.status, await response.read()


async def _one(
    session: aiohttp.ClientSession,
    work: Workload,
    headers: dict[str, str],
    request: tuple[str, str, bytes],
    tally: _Tally | None,
) -> None:
    started = time.perf_counter()
    try:
        status, payload = await _send(session, work, headers, request)
    except (aiohttp.ClientError, TimeoutError) as exc:
        if tally is not None:
            tally.requests += 1
            tally.error(type(exc).__name__, str(exc))
        return
    done = time.perf_counter()
    if tally is None:
        return
    tally.requests += 1
    tally.last_done = max(tally.last_done, done)
    if 200 <= status < 300:
        tally.latencies_ms.append((done - started) * 1000)
    else:
        tally.error(f"HTTP {status}", payload.decode("utf-8", "replace"))


async def _drive(spec: LoadSpec) -> LoadResult:
    work = spec.workload
    headers = {"x-api-key": work.api_key, "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    tally = _Tally()
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        if spec.count > 0:
            for seq in range(spec.warmup_count):
                request = build_request(work, 0, -1 - seq, 1)
                await _one(session, work, headers, request, None)
            start = _CpuSnapshot.take(spec.server_pid)
            for seq in range(spec.count):
                await _one(session, work, headers, build_request(work, 0, seq, 1), tally)
            end = _CpuSnapshot.take(spec.server_pid)
            result = _result(tally, end.at - start.at)
            _apply_cpu(result, start, end)
            return result

        loop_start = time.perf_counter()
        measure_from = loop_start + spec.warmup
        stop_at = measure_from + spec.duration

        async def worker(index: int) -> None:
            seq = 0
            while (now := time.perf_counter()) < stop_at:
                request = build_request(work, index, seq, spec.concurrency)
                await _one(session, work, headers, request, tally if now >= measure_from else None)
                seq += 1

        async def cpu_window() -> tuple[_CpuSnapshot, _CpuSnapshot]:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            first = _CpuSnapshot.take(spec.server_pid)
            await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
            return first, _CpuSnapshot.take(spec.server_pid)

        window = asyncio.create_task(cpu_window())
        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
        start, end = await window
        elapsed = max(stop_at, tally.last_done) - measure_from
        result = _result(tally, elapsed)
        _apply_cpu(result, start, end)
        return result


def _result(tally: _Tally, elapsed: float) -> LoadResult:
    return LoadResult(
        requests=tally.requests,
        errors=tally.errors,
        elapsed=elapsed,
        latencies_ms=tally.latencies_ms,
        error_kinds=dict(tally.error_kinds),
        error_sample=tally.error_sample,
    )


def drive(spec: LoadSpec) -> LoadResult:
    """Entry point in the generator process."""
    return asyncio.run(_drive(spec))
