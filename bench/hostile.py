"""The hostile-clients row of the watch bench (bench/README.md): watch clients that
never read, over a large backlog, against the server the other watch rows used.

A backlog of `BACKLOG_EVENTS` changes of about 60 KB each (≈ 90 MB) is written;
then `SILENT_WATCHERS` raw connections ask for everything after the revision before
it (`GET /api/v1/watch?after=N`) and never read a byte, with a small receive
buffer. Until the server has closed every one of them (it aborts a connection that
does not drain within WATCH_HEARTBEAT), the runner samples the server's resident
memory and asks `/health/liveness` every `SAMPLE_EVERY` s. The figure is the growth
of the server's memory over what it held just before the streams opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.load import SEED_ENTITY, process_tree
from bench.server import BENCH_API_KEY, BenchSetupError, Service
from bench.watchers import Spread

SILENT_WATCHERS = 10
BACKLOG_EVENTS = 1500
EVENT_PADDING = 60_000
"""Characters of metadata per change: 1500 of them make the issue's 90 MB."""
BATCH = 100
CLOSED_WITHIN = 60.0
"""Seconds for the server to close every silent stream (WATCH_HEARTBEAT is 15 s)."""
SAMPLE_EVERY = 0.05
_RECEIVE_BUFFER = 4096
_HEADERS = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}


@dataclass
class HostileClients:
    watchers: int
    backlog_events: int
    backlog_bytes: int
    """The request bodies that wrote the backlog (about its size in the feed)."""
    rss_before: int
    rss_peak: int
    closed: bool
    """The server closed every silent stream within CLOSED_WITHIN."""
    closed_after: float
    """Seconds from the requests to the last stream closed (or the deadline)."""
    cut_off: int
    """`potok_watch_cut_off_total{reason="too_slow"}` gained meanwhile."""
    health: Spread
    health_failures: int

    @property
    def growth_mb(self) -> float:
        return (self.rss_peak - self.rss_before) / 2**20

    def to_json(self) -> dict[str, Any]:
        return {
            "watchers": self.watchers,
            "backlog_events": self.backlog_events,
            "backlog_bytes": self.backlog_bytes,
            "rss_before": self.rss_before,
            "rss_peak": self.rss_peak,
            "growth_mb": self.growth_mb,
            "closed": self.closed,
            "closed_after": self.closed_after,
            "cut_off": self.cut_off,
            "health_ms": self.health.to_json(),
            "health_failures": self.health_failures,
        }


def resident_bytes(root: int) -> int:
    """The resident memory of `root` and its descendants (VmRSS summed)."""
    total = 0
    for stat in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{stat.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


async def measure_hostile(service: Service, session: aiohttp.ClientSession) -> HostileClients:
    start = await _newest_revision(service, session)
    backlog_bytes = await _write_backlog(service, session)
    rss_before = peak = resident_bytes(service.pid)
    cut_before = await _watch_metric(
        session, service, 'potok_watch_cut_off_total{reason="too_slow"}'
    )
    sockets = await _silent_streams(service, f"/api/v1/watch?after={start}")
    opened = time.monotonic()
    health: list[float] = []
    failures = 0
    closed = False
    seen_open = 0
    try:
        while time.monotonic() - opened < CLOSED_WITHIN:
            peak = max(peak, resident_bytes(service.pid))
            asked = time.monotonic()
            try:
                async with session.get(f"{service.base_url}/health/liveness") as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                health.append((time.monotonic() - asked) * 1000)
            else:
                failures += 1
            # Closed once every stream was seen open and none is left.
            clients = await _watch_metric(session, service, "potok_watch_clients")
            seen_open = max(seen_open, int(clients))
            if seen_open >= len(sockets) and clients == 0:
                closed = True
                break
            await asyncio.sleep(SAMPLE_EVERY)
        closed_after = time.monotonic() - opened
        peak = max(peak, resident_bytes(service.pid))
    finally:
        for sock in sockets:
            sock.close()
    cut_after = await _watch_metric(
        session, service, 'potok_watch_cut_off_total{reason="too_slow"}'
    )
    return HostileClients(
        watchers=len(sockets),
        backlog_events=BACKLOG_EVENTS,
        backlog_bytes=backlog_bytes,
        rss_before=rss_before,
        rss_peak=peak,
        closed=closed,
        closed_after=closed_after,
        cut_off=int(cut_after - cut_before),
        health=Spread.of(health),
        health_failures=failures,
    )


async def _newest_revision(service: Service, session: aiohttp.ClientSession) -> int:
    """The revision of a change written now (every later one is newer)."""
    url = f"{service.base_url}/api/v1/states/{SEED_ENTITY}"
    body = orjson.dumps({"entityId": f"hostile-{uuid.uuid4().hex[:8]}", "status": "online"})
    async with session.post(url, data=body, headers=_HEADERS) as response:
        payload = await response.read()
        if response.status != 201:
            raise BenchSetupError(f"POST {url}: HTTP {response.status}: {payload[:300]!r}")
    revision: int = orjson.loads(payload)["revision"]
    return revision


async def _write_backlog(service: Service, session: aiohttp.ClientSession) -> int:
    """`BACKLOG_EVENTS` large changes, in atomic batches; the bytes sent."""
    url = f"{service.base_url}/api/v1/states/{SEED_ENTITY}/batch"
    tag = uuid.uuid4().hex[:8]
    padding = "x" * EVENT_PADDING
    sent = 0
    for first in range(0, BACKLOG_EVENTS, BATCH):
        items = [
            {"entityId": f"hostile-{tag}-{i}", "status": "online", "metadata": {"pad": padding}}
            for i in range(first, min(first + BATCH, BACKLOG_EVENTS))
        ]
        body = orjson.dumps({"items": items, "atomic": True})
        async with session.post(url, data=body, headers=_HEADERS) as response:
            payload = await response.read()
            if response.status != 200:
                raise BenchSetupError(f"POST {url}: HTTP {response.status}: {payload[:300]!r}")
        sent += len(body)
    return sent


async def _silent_streams(service: Service, path: str) -> list[socket.socket]:
    """Connections that send a watch request and never read."""
    host, port = service.base_url.removeprefix("http://").rsplit(":", 1)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {BENCH_API_KEY}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    sockets = []
    for _ in range(SILENT_WATCHERS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, request)
        sockets.append(sock)
    return sockets


async def _watch_metric(session: aiohttp.ClientSession, service: Service, name: str) -> float:
    async with session.get(f"{service.base_url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    return 0.0
