"""The watcher process of the watch bench (`python -m bench.watchers`): it holds
every watch stream of a run on raw connections, driven by one JSON command per line
on its stdin, and answers each with one JSON line (bench/watch.py is its runner).

It parses the streams cheaply: the chunked HTTP body is not decoded; every `id:`
line (always after a newline: the previous frame's, or a chunk-size line's) is
found by a search. A stream either notes each revision with its arrival time
(`timed`, for change → event), or only counts (and checks the order of) what it
receives.
"""

from __future__ import annotations

import asyncio
import re
import resource
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from bench.server import BenchSetupError
from bench.webhooks import percentile

_REPO = Path(__file__).resolve().parent.parent
_OPEN_CONCURRENCY = 50
"""Streams the watcher process opens at a time."""
OPEN_WITHIN = 60.0
"""Seconds for every stream to get its first bytes (`retry:`)."""
CLOSE_WITHIN = 10.0
"""Seconds for the watcher process to close its streams and exit."""
_ID = re.compile(rb"\nid: (\d+)")


@dataclass(frozen=True)
class Spread:
    """A latency distribution, ms (nearest-rank percentiles)."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(0, float("nan"), float("nan"), float("nan"))
        return cls(
            len(values), percentile(list(values), 50), percentile(list(values), 99), max(values)
        )

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Spread:
        nan = float("nan")
        return cls(
            int(raw["count"]),
            float(raw["p50"] if raw["p50"] is not None else nan),
            float(raw["p99"] if raw["p99"] is not None else nan),
            float(raw["max"] if raw["max"] is not None else nan),
        )

    def to_json(self) -> dict[str, Any]:
        def finite(value: float) -> float | None:
            return None if value != value else value

        return {
            "count": self.count,
            "p50": finite(self.p50),
            "p99": finite(self.p99),
            "max": finite(self.max),
        }


# -- the watcher process ------------------------------------------------------------


class _Stream(asyncio.Protocol):
    """One watch stream over a raw connection. Only whole lines are looked at:
    what follows the last newline waits for the next read."""

    def __init__(self, request: bytes, timed: bool, sparse: bool) -> None:
        self.request = request
        self.timed = timed
        self.sparse = sparse
        """Filtered: it sees only some revisions, in order."""
        self.transport: asyncio.BaseTransport | None = None
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.error = ""
        self.closed = False
        self.tail = b""
        self.count = 0
        self.last = 0
        self.irregular = 0
        self.resets = 0
        self.reset_sample = b""
        self.revisions = array("q")
        self.arrivals = array("d")

    @property
    def open(self) -> bool:
        return self.status == 200 and not self.closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # uvloop's transports are not subclasses of asyncio.Transport.
        cast(asyncio.WriteTransport, transport).write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(f"connection closed: {exc}" if exc else "connection closed")

    def fail(self, error: str) -> None:
        if not self.opened.done():
            self.error = self.error or error
            self.opened.set_result(False)
            if self.transport is not None:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.tail + data if self.tail else data
        cut = buffer.rfind(b"\n")
        if cut < 0:
            self.tail = buffer
            return
        self.tail = buffer[cut:]
        block = buffer[:cut]
        if not self.status and not self._status(block):
            return
        if not self.opened.done() and b"\nretry: " in block:
            self.opened.set_result(True)
        count = block.count(b"\nid: ")
        if count:
            if self.timed:
                self._timed(block, now)
            else:
                self._counted(block, count)
        if b"\nevent: reset" in block:
            self.resets += 1
            start = block.find(b"\nevent: reset")
            self.reset_sample = self.reset_sample or block[start : start + 200]

    def _status(self, block: bytes) -> bool:
        try:
            self.status = int(block[9:12])
        except ValueError:
            self.status = -1
        if self.status != 200:
            status_line = block.split(b"\r\n", 1)[0]
            self.fail(f"HTTP {self.status}: {status_line[:200].decode(errors='replace')}")
            return False
        return True

    def _timed(self, block: bytes, now: float) -> None:
        for match in _ID.finditer(block):
            revision = int(match.group(1))
            if self.last and revision != self.last + 1:
                self.irregular += 1
            self.revisions.append(revision)
            self.arrivals.append(now)
            self.last = max(self.last, revision)
            self.count += 1

    def _counted(self, block: bytes, count: int) -> None:
        first = _ID.search(block)
        last = _ID.match(block, block.rfind(b"\nid: "))
        assert first is not None
        assert last is not None
        low, high = int(first.group(1)), int(last.group(1))
        if self.sparse:
            if low <= self.last or high < low:
                self.irregular += 1
        elif (self.last and low != self.last + 1) or high - low + 1 != count:
            self.irregular += 1
        self.last = max(self.last, high)
        self.count += count


class _Holder:
    """The watcher process's state: every stream it opened."""

    def __init__(self) -> None:
        self.streams: list[_Stream] = []
        self.marks: dict[int, tuple[int, int]] = {}

    def _open_streams(self) -> list[_Stream]:
        return [s for s in self.streams if s.status == 200]

    async def open(
        self,
        host: str,
        port: int,
        paths: list[str],
        api_key: str,
        count: int,
        timed: bool,
        sparse: bool = False,
    ) -> dict[str, Any]:
        """`count` streams, stream i on `paths[i % len(paths)]`."""
        raise_open_files(count + 256)
        loop = asyncio.get_running_loop()
        requests = [
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nx-api-key: {api_key}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n"
                "\r\n"
            ).encode()
            for path in paths
        ]
        gate = asyncio.Semaphore(_OPEN_CONCURRENCY)
        started = time.monotonic()

        async def one(index: int) -> None:
            stream = _Stream(requests[index % len(requests)], timed, sparse)
            self.streams.append(stream)
            async with gate:
                try:
                    await loop.create_connection(lambda: stream, host, port)
                    await asyncio.wait_for(asyncio.shield(stream.opened), OPEN_WITHIN)
                except (OSError, TimeoutError) as exc:
                    stream.fail(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(index) for index in range(count)))
        failed = [s for s in self.streams if s.status != 200 or not s.opened.result()]
        errors = Counter(s.error.split(":")[0] for s in failed)
        return {
            "opened": len(self.streams) - len(failed),
            "failed": len(failed),
            "errors": dict(errors),
            "sample": failed[0].error if failed else "",
            "seconds": time.monotonic() - started,
        }

    async def wait(self, revision: int, within: float) -> dict[str, Any]:
        """Until every open stream has seen `revision` (at most `within` s)."""
        started = time.monotonic()
        deadline = started + within
        while True:
            streams = self._open_streams()
            behind = [s for s in streams if s.open and s.last < revision]
            if not behind or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        return {
            "reached": sum(1 for s in streams if s.last >= revision),
            "open": sum(1 for s in streams if s.open),
            "closed": sum(1 for s in streams if s.closed),
            "seconds": time.monotonic() - started,
        }

    def timing(self, on: bool) -> dict[str, Any]:
        for stream in self.streams:
            stream.timed = on
            if not on:
                stream.revisions, stream.arrivals = array("q"), array("d")
        return {}

    def mark(self) -> dict[str, Any]:
        self.marks = {id(s): (s.count, s.irregular) for s in self.streams}
        return {}

    def received(self) -> dict[str, Any]:
        """Events the open streams received since `mark`, summed: for streams that
        each see only some of the changes."""
        got = irregular = 0
        for stream in self._open_streams():
            count, irregular_before = self.marks.get(id(stream), (0, 0))
            got += stream.count - count
            irregular += stream.irregular - irregular_before
        return {
            "received": got,
            "irregular": irregular,
            "open": sum(1 for s in self.streams if s.open),
        }

    def tally(self, start: int, target: int) -> dict[str, Any]:
        """Events since `mark`, against the `target − start` every stream should
        have received (all of start+1 … target)."""
        expected = target - start
        lost = extra = irregular = reached = 0
        for stream in self._open_streams():
            count, irregular_before = self.marks.get(id(stream), (0, 0))
            got = stream.count - count
            lost += max(0, expected - got)
            extra += max(0, got - expected)
            irregular += stream.irregular - irregular_before
            reached += stream.last >= target
        return {
            "expected_each": expected,
            "lost": lost,
            "extra": extra,
            "irregular": irregular,
            "reached": reached,
        }

    def latency(self, timings: list[list[float]]) -> dict[str, Any]:
        """Arrival of every written change at every stream that opened."""
        written = {int(row[0]): (row[1], row[2]) for row in timings}
        after_response: list[float] = []
        after_request: list[float] = []
        last_arrival: dict[int, float] = {}
        lost = duplicates = out_of_order = complete = 0
        counts: list[int] = []
        for stream in self._open_streams():
            seen: set[int] = set()
            highest = 0
            got = 0
            for revision, arrived in zip(stream.revisions, stream.arrivals, strict=True):
                if revision in seen:
                    duplicates += 1
                    continue
                seen.add(revision)
                if revision < highest:
                    out_of_order += 1
                highest = max(highest, revision)
                timing = written.get(revision)
                if timing is None:
                    continue
                got += 1
                after_response.append((arrived - timing[1]) * 1000)
                after_request.append((arrived - timing[0]) * 1000)
                if arrived > last_arrival.get(revision, float("-inf")):
                    last_arrival[revision] = arrived
            counts.append(got)
            lost += len(written) - got
            complete += got == len(written)
        last_watcher = [(at - written[rev][1]) * 1000 for rev, at in last_arrival.items()]
        return {
            "after_response": Spread.of(after_response).to_json(),
            "after_request": Spread.of(after_request).to_json(),
            "last_watcher": Spread.of(last_watcher).to_json(),
            "lost": lost,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "complete": complete,
            "events_min": min(counts, default=0),
            "events_max": max(counts, default=0),
        }

    def summary(self) -> dict[str, Any]:
        streams = self._open_streams()
        sample = next((s.reset_sample for s in streams if s.reset_sample), b"")
        return {
            "open": sum(1 for s in streams if s.open),
            "closed": sum(1 for s in streams if s.closed),
            "resets": sum(s.resets for s in streams),
            "reset_sample": sample.decode(errors="replace"),
        }

    async def close(self) -> dict[str, Any]:
        summary = self.summary()
        for stream in self.streams:
            if stream.transport is not None:
                stream.transport.close()
        await asyncio.sleep(0.1)
        return summary

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        match command.pop("cmd"):
            case "open":
                return await self.open(**command)
            case "wait":
                return await self.wait(**command)
            case "timing":
                return self.timing(**command)
            case "mark":
                return self.mark()
            case "received":
                return self.received()
            case "tally":
                return self.tally(**command)
            case "latency":
                return self.latency(**command)
            case "summary":
                return self.summary()
            case "close":
                return await self.close()
        raise ValueError(f"unknown command {command}")


def raise_open_files(needed: int) -> str:
    """Raise this process's soft RLIMIT_NOFILE to `needed` (at most the hard
    limit; children inherit it); what it is now, for the report."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return f"RLIMIT_NOFILE raised from {soft} to {target} (hard {hard})"
    return f"RLIMIT_NOFILE {soft} (hard {hard}): enough, left alone"


async def _serve_commands() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    holder = _Holder()
    while line := await reader.readline():
        command = orjson.loads(line)
        name = command["cmd"]
        try:
            reply = await holder.handle(command)
        except Exception as exc:  # reported to the runner, which raises it there
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
        sys.stdout.flush()
        if name == "close":
            return


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, as the server's event loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def hold() -> None:
    """Entry point of the watcher process."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve_commands())


# -- the runner's side -----------------------------------------------------------------


class WatcherProcess:
    """The watcher process, driven by one JSON line per command."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def call(
        self, command: str, reply_within: float = 120.0, **fields: Any
    ) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(orjson.dumps({"cmd": command, **fields}) + b"\n")
        await self.process.stdin.drain()
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), reply_within)
        except TimeoutError:
            line = b""
        if not line:
            raise BenchSetupError(
                f"the watcher process did not answer {command!r}:\n{self.log_tail()}"
            )
        reply: dict[str, Any] = orjson.loads(line)
        if "error" in reply:
            raise BenchSetupError(f"the watcher process failed {command!r}: {reply['error']}")
        return reply


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


@asynccontextmanager
async def watcher_process(workdir: Path) -> AsyncIterator[WatcherProcess]:
    log_path = workdir / f"watchers-{uuid.uuid4().hex[:8]}.log"
    with _open_log(log_path) as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.watchers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            cwd=_REPO,
            limit=2**24,
        )
    holder = WatcherProcess(process, log_path)
    try:
        yield holder
    finally:
        if process.returncode is None:
            with suppress(BenchSetupError, OSError):
                await holder.call("close", reply_within=CLOSE_WITHIN)
            try:
                await asyncio.wait_for(process.wait(), CLOSE_WITHIN)
            except TimeoutError:
                process.kill()
                await process.wait()


if __name__ == "__main__":
    hold()
