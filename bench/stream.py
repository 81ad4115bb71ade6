"""Event stream figures of bench/README.md (NATS JetStream, docs/stream.md),
against the real service and a private `nats-server -js` started here.

* `stream_publish`: a backlog of changes is written with the stream off (atomic
  batches of new ids); then a service with NATS_URL starts and its publisher
  drains the outbox into the stream: rate = messages ÷ (last stored − first
  stored), from the stream's message count polled every 5 ms. The ceiling is a
  raw nats-py JetStream `publish_async` of the same subjects, bodies and
  `Nats-Msg-Id`s into a stream of its own on the same server, from this
  process, all in flight at once, acks awaited; before and after the drain.
* `stream_latency`: changes at a steady rate (atomic batches of 10, open
  loop); an ordered JetStream consumer in this process receives each message
  once the stream has stored it; latency = arrival − the batch's response (and
  − its start). Lost, duplicates and out-of-order arrivals are counted.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import orjson
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StorageType, StreamConfig

from bench.load import process_cpu_seconds
from bench.server import BENCH_API_KEY, BenchSetupError, free_port, running_service
from potok_state.changes.model import EventRecord
from potok_state.changes.payload import event_body
from potok_state.clock import utc_now
from potok_state.stream.messages import MSG_ID_HEADER, subject

STREAM_KEYS = ("stream_publish", "stream_latency")
STREAM = "POTOK_BENCH"
RAW_STREAM = "RAW_BENCH"
_API_HEADERS = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}
_BATCH = 1000
_LATENCY_BATCH = 10
_DRAIN_WITHIN = 120.0
_SETTLE = 10.0


@dataclass(frozen=True)
class StreamOptions:
    backlog: int
    """Changes written before the publisher starts (`stream_publish`)."""
    rate: float
    """Changes per second in `stream_latency`."""
    changes: int
    """Changes written (and measured) in `stream_latency`."""


@dataclass(frozen=True)
class PublishRate:
    backend: str
    messages: int
    seconds: float
    raw_rates: tuple[float, float]
    server_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def raw_rate(self) -> float:
        return sum(self.raw_rates) / len(self.raw_rates)

    @property
    def ratio(self) -> float:
        return self.rate / self.raw_rate if self.raw_rate else 0.0


@dataclass(frozen=True)
class PublishLatency:
    backend: str
    rate: float
    written: int
    from_response_ms: list[float]
    from_start_ms: list[float]
    lost: int
    duplicates: int
    out_of_order: int


@dataclass
class StreamResults:
    rates: list[PublishRate]
    latencies: list[PublishLatency]


# -- a private nats-server ------------------------------------------------------------


def _start_nats(port: int, store: Path) -> subprocess.Popen[bytes]:
    with (store / "nats-server.log").open("ab") as log:
        return subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@asynccontextmanager
async def nats_server(workdir: Path) -> AsyncIterator[str]:
    port = free_port()
    store = workdir / f"nats-{port}"
    store.mkdir()
    process = _start_nats(port, store)
    url = f"nats://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = await nats.connect(
                    url, connect_timeout=1, max_reconnect_attempts=0, error_cb=_quiet
                )
                await client.close()
                break
            except Exception as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchSetupError(f"nats-server did not start: {exc}") from exc
                await asyncio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _quiet(_: Exception) -> None:
    """nats-py prints every refused connection while the server starts."""


async def _message_count(client: Nats, stream: str) -> int:
    try:
        info = await client.jetstream().stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0
    return int(info.state.messages)


# -- writing --------------------------------------------------------------------------


async def _write_batch(http: aiohttp.ClientSession, base: str, ids: list[str]) -> None:
    items = [{"entityId": entity_id, "status": "online", "metadata": {"n": 1}} for entity_id in ids]
    async with http.post(
        f"{base}/api/v1/states/user/batch",
        data=orjson.dumps({"atomic": True, "items": items}),
        headers=_API_HEADERS,
    ) as response:
        if response.status != 200:
            raise BenchSetupError(f"batch write failed: {response.status} {await response.text()}")


async def _feed(http: aiohttp.ClientSession, base: str) -> list[EventRecord]:
    """The whole change feed, as the records the publisher reads."""
    records: list[EventRecord] = []
    after = 0
    while True:
        async with http.get(
            f"{base}/api/v1/changes", params={"after": after, "limit": 1000}, headers=_API_HEADERS
        ) as response:
            page = orjson.loads(await response.read())
        for item in page["items"]:
            data = item["data"]
            records.append(
                EventRecord(
                    revision=item["revision"],
                    event_id=item["id"],
                    event=item["event"],
                    entity=data.get("entity"),
                    entity_id=data.get("id"),
                    data=orjson.dumps(data).decode(),
                    created_at=utc_now(),  # unused: subjects and bodies only
                )
            )
        if not page["items"]:
            return records
        after = page["nextAfter"]


# -- publish rate ---------------------------------------------------------------------


async def _raw_publish_rate(url: str, records: list[EventRecord], run: int) -> float:
    """nats-py JetStream publish_async of the same messages, all in flight, acks awaited."""
    client = await nats.connect(url)
    try:
        js = client.jetstream(publish_async_max_pending=len(records) + 1)
        stream = f"{RAW_STREAM}_{run}"
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"raw{run}.>"],
                storage=StorageType.FILE,
                duplicate_window=120,
            )
        )
        bodies = [
            (subject(f"raw{run}", record), event_body(record), record.event_id)
            for record in records
        ]
        started = time.perf_counter()
        futures = [
            await js.publish_async(name, body, headers={MSG_ID_HEADER: event_id})
            for name, body, event_id in bodies
        ]
        await asyncio.gather(*futures)
        return len(records) / (time.perf_counter() - started)
    finally:
        await client.close()


async def measure_publish_rate(
    backend: str, database_url: str, workdir: Path, url: str, backlog: int
) -> PublishRate:
    base_settings = {"DATABASE_URL": database_url}
    async with running_service(workdir, base_settings) as service, aiohttp.ClientSession() as http:
        for start in range(0, backlog, _BATCH):
            ids = [f"np-{uuid.uuid4().hex[:12]}" for _ in range(min(_BATCH, backlog - start))]
            await _write_batch(http, service.base_url, ids)
        records = await _feed(http, service.base_url)
    first_raw = await _raw_publish_rate(url, records, 1)
    settings = {**base_settings, "NATS_URL": url, "NATS_STREAM": STREAM}
    client = await nats.connect(url)
    try:
        async with running_service(workdir, settings) as service:
            cpu_before = process_cpu_seconds(service.process.pid)
            first_at: float | None = None
            deadline = time.monotonic() + _DRAIN_WITHIN
            while True:
                count = await _message_count(client, STREAM)
                now = time.perf_counter()
                if count and first_at is None:
                    first_at, first_count = now, count
                if count >= len(records):
                    break
                if time.monotonic() > deadline:
                    raise BenchSetupError(f"the publisher stored {count} of {len(records)}")
                await asyncio.sleep(0.005)
            cpu = process_cpu_seconds(service.process.pid) - cpu_before
        assert first_at is not None
        seconds = now - first_at
    finally:
        await client.close()
    second_raw = await _raw_publish_rate(url, records, 2)
    return PublishRate(
        backend=backend,
        messages=len(records) - first_count,
        seconds=seconds,
        raw_rates=(first_raw, second_raw),
        server_cpu_seconds=cpu,
    )


# -- change → message latency --------------------------------------------------------


async def measure_latency(
    backend: str, database_url: str, workdir: Path, url: str, rate: float, changes: int
) -> PublishLatency:
    settings = {"DATABASE_URL": database_url, "NATS_URL": url, "NATS_STREAM": STREAM}
    arrivals: dict[str, list[float]] = {}
    order: list[int] = []

    async def on_message(message: Msg) -> None:
        event = orjson.loads(message.data)
        if event["event"] == "entity.created":
            arrivals.setdefault(event["data"]["id"], []).append(time.perf_counter())
            order.append(event["revision"])

    client = await nats.connect(url)
    written: dict[str, tuple[float, float]] = {}
    try:
        async with running_service(workdir, settings) as service, aiohttp.ClientSession() as http:
            await _write_batch(http, service.base_url, [f"warm-{uuid.uuid4().hex[:8]}"])
            while await _message_count(client, STREAM) == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            subscription = await client.jetstream().subscribe(
                "potok.>",
                stream=STREAM,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                cb=on_message,
            )
            interval = _LATENCY_BATCH / rate
            started = time.perf_counter()
            pending: set[asyncio.Task[None]] = set()

            async def one(n: int) -> None:
                ids = [f"nl-{n}-{k}-{uuid.uuid4().hex[:6]}" for k in range(_LATENCY_BATCH)]
                begun = time.perf_counter()
                await _write_batch(http, service.base_url, ids)
                answered = time.perf_counter()
                for entity_id in ids:
                    written[entity_id] = (begun, answered)

            for n in range(changes // _LATENCY_BATCH):
                delay = started + n * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(n))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            deadline = time.monotonic() + _SETTLE
            while time.monotonic() < deadline and not set(written) <= set(arrivals):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await subscription.unsubscribe()
    finally:
        await client.close()
    from_response = [
        (arrivals[i][0] - answered) * 1000 for i, (_, answered) in written.items() if i in arrivals
    ]
    from_start = [
        (arrivals[i][0] - begun) * 1000 for i, (begun, _) in written.items() if i in arrivals
    ]
    return PublishLatency(
        backend=backend,
        rate=rate,
        written=len(written),
        from_response_ms=from_response,
        from_start_ms=from_start,
        lost=sum(1 for i in written if i not in arrivals),
        duplicates=sum(len(times) - 1 for times in arrivals.values()),
        out_of_order=sum(1 for a, b in itertools.pairwise(order) if b <= a),
    )


async def measure(
    backend: str,
    database_url: str,
    workdir: Path,
    keys: set[str],
    options: StreamOptions,
    progress: Callable[[str], None],
) -> StreamResults:
    results = StreamResults([], [])
    async with nats_server(workdir) as url:
        if "stream_publish" in keys:
            progress(f"bench: {backend}: stream_publish ({options.backlog} changes)")
            results.rates.append(
                await measure_publish_rate(backend, database_url, workdir, url, options.backlog)
            )
        if "stream_latency" in keys:
            progress(f"bench: {backend}: stream_latency ({options.rate:g}/s)")
            results.latencies.append(
                await measure_latency(
                    backend, database_url, workdir, url, options.rate, options.changes
                )
            )
    return results


# -- report ---------------------------------------------------------------------------

PUBLISH_GOAL = 0.5
LATENCY_GOAL_MS = 100.0


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def report_section(results: StreamResults, options: StreamOptions) -> list[str]:
    """The *Event stream (NATS JetStream)* section of bench/REPORT.md."""
    if not results.rates and not results.latencies:
        return []
    out = ["## Event stream (NATS JetStream), 1 worker only", ""]
    if results.rates:
        out += [
            "| backend | messages | publisher msg/s | raw publish_async msg/s (before, after) "
            "| ratio | server CPU µs/msg | goal ≥ 0.5× raw |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results.rates:
            met = "met" if r.ratio >= PUBLISH_GOAL else "**missed**"
            out.append(
                f"| {r.backend} | {r.messages:,} | {r.rate:,.0f} | {r.raw_rate:,.0f} "
                f"({r.raw_rates[0]:,.0f}, {r.raw_rates[1]:,.0f}) | {r.ratio:.2f} | "
                f"{r.server_cpu_seconds / max(r.messages, 1) * 1e6:.0f} | {met} |"
            )
        out += [
            "",
            f"{options.backlog:,} changes written with the stream off, then a `serve` with "
            "NATS_URL drains the outbox into its stream (first → last stored, the stream's "
            "count polled every 5 ms); the raw figure is nats-py `publish_async` of the same "
            "subjects, bodies and `Nats-Msg-Id`s from the bench process, all in flight, "
            "into a stream of its own on the same private nats-server.",
            "",
        ]
    if results.latencies:
        out += [
            "| backend | changes/s | changes | p50 ms | p99 ms | max ms | p99 from write start ms "
            "| lost | duplicates | out of order | goal p99 ≤ 100 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for lat in results.latencies:
            p99 = _percentile(lat.from_response_ms, 99)
            met = "met" if p99 <= LATENCY_GOAL_MS and lat.lost == 0 else "**missed**"
            out.append(
                f"| {lat.backend} | {lat.rate:g} | {lat.written:,} | "
                f"{_percentile(lat.from_response_ms, 50):.1f} | {p99:.1f} | "
                f"{max(lat.from_response_ms, default=float('nan')):.1f} | "
                f"{_percentile(lat.from_start_ms, 99):.1f} | {lat.lost} | {lat.duplicates} | "
                f"{lat.out_of_order} | {met} |"
            )
        out += [
            "",
            f"Changes as atomic batches of {_LATENCY_BATCH} new `user` states at a steady "
            "rate (open loop); an ordered JetStream consumer in the bench process gets each "
            "message once the stream stored it; latency = arrival − the write's response.",
            "",
        ]
    return out
