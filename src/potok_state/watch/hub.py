"""The watch hub: one per process. It tails the change feed from storage and
writes every new event to the open watch streams (docs/watch.md).

* One reader for all streams: the hub is woken by the commit feed (commits of
  this process; on PostgreSQL, every replica's commits through LISTEN/NOTIFY)
  and polls as a safety net (on SQLite, the only way to hear of other
  processes on the same file). It reads what is new once, encodes each event
  once, finds the streams that want it through an index of their filters, and
  writes one chunk per filter and round straight to each stream's connection
  (watch/sinks.py): no task wakes up per stream, no middleware runs per chunk.
* A stream first replays what it missed from storage, in pages sized to its
  byte budget and read only as the client drains the previous one, then joins
  the live fan-out at the exact revision it has reached (no gap, no duplicate:
  the join happens with no await between the check and the registration).
* Writers never wait for readers, and memory is bounded in bytes: what a
  stream holds is its connection's write buffer. A live stream that would hold
  more than WATCH_MAX_BUFFER_BYTES is cut off with a `reset` event saying where
  to resume; when all streams together hold more than WATCH_MEMORY_BUDGET, the
  ones holding most are closed at once. A stream whose buffer has not drained
  at all for half a heartbeat interval (its client stopped reading) has its
  connection aborted: slot, socket and buffer go together.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import structlog

from potok_state.kit.errors import TooManyRequests, Unavailable
from potok_state.kit.server import StreamChunk
from potok_state.metrics import Metrics
from potok_state.storage.port import StateStore
from potok_state.wakeup import Wakeup
from potok_state.watch.filters import FilterIndex, WatchEvent, WatchFilter
from potok_state.watch.sinks import StreamSink

log = structlog.get_logger(__name__)

READ_BATCH = 1000
"""The most events read at once; fewer when they are large (`_page_for`)."""
FIRST_PAGE = 16
"""A stream's first replay page, before the size of its events is known."""
RETRY_AFTER_STORE_ERROR = 1.0
ROOM_WAIT = 0.05
"""How often a replay waiting for the process's memory budget looks again."""
HEARTBEAT = StreamChunk(b": heartbeat\n")
# Reads of new events are spaced by this much per stream written to in the
# last round (at most MAX_FAN_OUT_PAUSE): each write costs a socket send, so
# with many streams fewer, larger rounds keep the loop free for writers.
FAN_OUT_PAUSE_PER_WRITE = 0.000_05
MAX_FAN_OUT_PAUSE = 0.08
# Rounds are at least this far apart however few streams they write to: each
# read of the outbox costs about as much as a small write, and a busy store
# commits far more often than this.
MIN_ROUND_SPACING = 0.005


def reset_frame(reason: str, **fields: int | None) -> bytes:
    """The last event of a stream the client must resume differently. No `id:`,
    so an EventSource keeps the id of the last event it really received."""
    return b"event: reset\ndata: %s\n\n" % orjson.dumps({"reason": reason, **fields})


def _pending_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False, slots=True)
class Watcher:
    """One open stream: its filter, its position and what its connection holds."""

    actor: str
    filter: WatchFilter
    cursor: int
    """Every event up to here has been written or found not to match."""
    delivered: int = 0
    """The revision of the last event written to the connection."""
    sink: StreamSink | None = None
    final: bytes | None = None
    """Set when the stream must end: the bytes to send last."""
    lost: bool = False
    """The connection is gone (or being aborted): nothing more can be sent."""
    ended: asyncio.Future[None] = field(default_factory=_pending_future)
    live: bool = False
    written: int = 0
    """Bytes handed to the sink, ever."""
    buffered_seen: int = 0
    """The sink's buffer when last looked at (it only shrinks unseen)."""
    sent_since_beat: bool = False
    flushed: asyncio.Future[None] | None = None
    """While the stream waits for its last bytes to leave: done when they have
    (or the connection is gone)."""
    _mark_buffered: int = 0
    _mark_written: int = 0

    def write(self, chunk: StreamChunk, revision: int) -> None:
        assert self.sink is not None
        self.written += self.sink.write(chunk)
        self.delivered = revision
        self.sent_since_beat = True

    def end(self, final: bytes = b"") -> None:
        """End the stream after `final` (sent once what is buffered has gone)."""
        if self.final is None:
            self.final = final
        if not self.ended.done():
            self.ended.set_result(None)

    def abort(self) -> None:
        """Drop the connection and what it holds."""
        self.lost = True
        if self.sink is not None:
            self.sink.abort()
        self.end()
        self.settle_flush()

    def connection_lost(self) -> None:
        self.lost = True
        self.end()
        self.settle_flush()

    def settle_flush(self) -> None:
        if self.flushed is not None and not self.flushed.done():
            self.flushed.set_result(None)

    def stalled(self, buffered: int) -> bool:
        """Whether nothing at all left the buffer since the last look (which had
        something in it); the look is remembered for the next one."""
        drained = self._mark_buffered + (self.written - self._mark_written) - buffered
        stalled = self._mark_buffered > 0 and buffered > 0 and drained <= 0
        self._mark_buffered, self._mark_written = buffered, self.written
        return stalled


@dataclass(frozen=True, slots=True)
class Opened:
    """A stream admitted by the hub, or the reset that answers it instead."""

    watcher: Watcher | None
    reset: bytes | None = None


class WatchHub:
    def __init__(
        self,
        store: StateStore,
        wakeup: Wakeup,
        metrics: Metrics,
        *,
        max_clients: int,
        max_buffer_bytes: int,
        memory_budget: int,
        poll_seconds: float,
        heartbeat_seconds: float,
    ) -> None:
        self.store = store
        self.heartbeat_seconds = heartbeat_seconds
        self.metrics = metrics
        self.max_clients = max_clients
        self.max_buffer_bytes = max_buffer_bytes
        self.memory_budget = memory_budget
        self.poll_seconds = poll_seconds
        self.head = 0
        """The revision up to which events were handed to live streams."""
        self._page_bytes = max_buffer_bytes // 2
        """What a page of events may weigh: a stream holding up to half its
        budget still takes a whole one."""
        self._page = FIRST_PAGE
        self._wakeup = wakeup
        self._watchers: set[Watcher] = set()
        self._live: dict[WatchFilter, dict[Watcher, None]] = {}
        self._index = FilterIndex()
        self._buffered_total = 0
        """What the streams hold, as last seen: never less than the truth."""
        self._writes_last_round = 0
        self._per_actor: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self, actor: str, watch_filter: WatchFilter, after: int | None) -> Opened:
        """Admit a stream that resumes after revision `after` (None: from now)."""
        if self._closed:
            raise Unavailable("The service is shutting down; reconnect to another replica.")
        if self._per_actor[actor] >= self.max_clients:
            raise TooManyRequests(
                f"This API key has {self.max_clients} open watch streams here (WATCH_MAX_CLIENTS).",
                details={"limit": self.max_clients},
            )
        self._per_actor[actor] += 1  # held across the await below, so the limit holds
        try:
            bounds = await self.store.revision_bounds()
        except BaseException:
            self._release(actor)
            raise
        if after is not None:
            kept_from = bounds.oldest if bounds.oldest is not None else bounds.head + 1
            if after > bounds.head or after < kept_from - 1:
                self._release(actor)
                reason = "revision_unknown" if after > bounds.head else "revision_too_old"
                self.metrics.watch_cut_off.labels(reason).inc()
                return Opened(
                    None,
                    reset_frame(reason, oldestRevision=bounds.oldest, revision=bounds.head),
                )
        if not self._watchers:
            # Nobody was watching, so the hub has not followed the feed.
            self.head = bounds.head
        cursor = bounds.head if after is None else after
        watcher = Watcher(actor, watch_filter, cursor, delivered=cursor)
        self._watchers.add(watcher)
        self.metrics.watch_clients.inc()
        if self._task is None:
            # Contexts of their own, not the first stream's request (its log fields).
            self._task = asyncio.create_task(
                self._tail(), name="watch-hub", context=contextvars.Context()
            )
            self._ticker = asyncio.create_task(
                self._tick(), name="watch-ticker", context=contextvars.Context()
            )
        return Opened(watcher)

    def _release(self, actor: str) -> None:
        self._per_actor[actor] -= 1
        if not self._per_actor[actor]:
            del self._per_actor[actor]

    def attach(self, watcher: Watcher, sink: StreamSink) -> None:
        """The stream's response has started: from now on its bytes go to `sink`."""
        watcher.sink = sink
        sink.on_lost(watcher.connection_lost)

    async def catch_up(self, watcher: Watcher) -> None:
        """Replay from storage what the stream missed, a page at a time as the
        client drains the last one, then join the live fan-out."""
        sink = watcher.sink
        assert sink is not None
        page = FIRST_PAGE
        while watcher.final is None:
            if watcher.cursor >= self.head:
                self._join(watcher)
                return
            await sink.drained()
            await self._room(watcher)
            if watcher.final is not None:
                return
            records = await self.store.changes(watcher.cursor, page)
            if watcher.final is not None:
                return
            if not records:
                watcher.cursor = max(watcher.cursor, self.head)
                continue
            events = [WatchEvent(record) for record in records]
            chunk = b"".join(event.frame for event in events if watcher.filter.matches(event))
            watcher.cursor = records[-1].revision
            if chunk:
                watcher.write(StreamChunk(chunk), watcher.cursor)
                self._observe(watcher)
            page = self._page_for(events)

    async def until_flushed(self, watcher: Watcher) -> None:
        """Until the connection has taken every byte of the stream, or was aborted
        for not reading: a stream keeps its slot as long as it holds memory (and,
        were the connection closed now, its socket would stay open until then)."""
        sink = watcher.sink
        assert sink is not None
        # Stopping, the process lets every socket go with it.
        while not (watcher.lost or self._closed) and sink.buffered():
            watcher.flushed = asyncio.get_running_loop().create_future()
            await watcher.flushed

    def leave(self, watcher: Watcher) -> None:
        """The stream's response is over and its connection closed or reusable."""
        if watcher not in self._watchers:
            return
        self._watchers.discard(watcher)
        self._release(watcher.actor)
        self.metrics.watch_clients.dec()
        self._unjoin(watcher)
        self._buffered_total -= watcher.buffered_seen
        watcher.buffered_seen = 0

    def close(self) -> None:
        """End every stream (the server is stopping); clients resume elsewhere. A
        stream whose client is behind is closed at once rather than waited for."""
        self._closed = True
        for watcher in list(self._watchers):
            if watcher.final is None:
                self.metrics.watch_cut_off.labels("shutdown").inc()
            if watcher.sink is not None and watcher.sink.buffered():
                watcher.abort()
            else:
                watcher.end()
            watcher.settle_flush()
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
        self._task = self._ticker = None

    # -- memory -----------------------------------------------------------------

    def _observe(self, watcher: Watcher) -> None:
        assert watcher.sink is not None
        buffered = watcher.sink.buffered()
        self._buffered_total += buffered - watcher.buffered_seen
        watcher.buffered_seen = buffered

    def _recount(self) -> None:
        total = 0
        for watcher in self._watchers:
            if watcher.sink is not None:
                watcher.buffered_seen = watcher.sink.buffered()
                total += watcher.buffered_seen
        self._buffered_total = total

    async def _room(self, watcher: Watcher) -> None:
        """Until the streams together hold less than the process's budget (a replay
        adds to it only then; the live fan-out and the ticker make room)."""
        while self._buffered_total > self.memory_budget and watcher.final is None:
            self._recount()
            if self._buffered_total <= self.memory_budget:
                return
            await asyncio.sleep(ROOM_WAIT)

    def _enforce_budget(self) -> None:
        """Close the streams holding most until the rest fit the process's budget."""
        self._recount()
        if self._buffered_total <= self.memory_budget:
            return
        for watcher in sorted(self._watchers, key=lambda w: w.buffered_seen, reverse=True):
            if self._buffered_total <= self.memory_budget or not watcher.buffered_seen:
                return
            self._cut_off(watcher, "memory_budget")

    def _page_for(self, events: Sequence[WatchEvent]) -> int:
        """How many events of this size fit a page."""
        average = sum(len(event.frame) for event in events) / len(events)
        return max(1, min(READ_BATCH, int(self._page_bytes / average)))

    async def _tick(self) -> None:
        """One timer for every stream, twice per heartbeat interval: connections
        that did not drain at all since the last look are aborted, the memory
        count is made exact, and every other time each stream that sent nothing
        for a heartbeat interval gets a comment line."""
        beat = False
        while True:
            await asyncio.sleep(self.heartbeat_seconds / 2)
            beat = not beat
            total = 0
            stalled: list[Watcher] = []
            for watcher in self._watchers:
                sink = watcher.sink
                if sink is None or watcher.lost:
                    continue
                buffered = sink.buffered()
                if watcher.stalled(buffered):
                    stalled.append(watcher)
                elif beat:
                    if not watcher.sent_since_beat and watcher.final is None:
                        watcher.written += sink.write(HEARTBEAT)
                        buffered = sink.buffered()
                    watcher.sent_since_beat = False
                if not buffered:
                    watcher.settle_flush()
                watcher.buffered_seen = buffered
                total += buffered
            self._buffered_total = total
            for watcher in stalled:
                self._cut_off(watcher, "not_reading")
            if self._buffered_total > self.memory_budget:
                self._enforce_budget()

    # -- the tail -------------------------------------------------------------

    def _join(self, watcher: Watcher) -> None:
        group = self._live.get(watcher.filter)
        if group is None:
            group = self._live[watcher.filter] = {}
            self._index.add(watcher.filter)
        group[watcher] = None
        watcher.live = True

    def _unjoin(self, watcher: Watcher) -> None:
        if not watcher.live:
            return
        watcher.live = False
        group = self._live[watcher.filter]
        del group[watcher]
        if not group:
            del self._live[watcher.filter]
            self._index.remove(watcher.filter)

    async def _tail(self) -> None:
        while True:
            await self._wakeup.wait(self.poll_seconds)
            if not self._watchers:
                continue
            try:
                await self._read_new()
            except Exception as exc:  # the store is down: streams wait, nothing is lost
                log.warning("watch.read_failed", error=type(exc).__name__)
                await asyncio.sleep(RETRY_AFTER_STORE_ERROR)
                continue
            pause = min(MAX_FAN_OUT_PAUSE, self._writes_last_round * FAN_OUT_PAUSE_PER_WRITE)
            await asyncio.sleep(max(MIN_ROUND_SPACING, pause))

    async def _read_new(self) -> None:
        self._writes_last_round = 0
        while self._watchers:
            page = self._page
            records = await self.store.recent_changes(self.head, page)
            if not records:
                return
            events = [WatchEvent(record) for record in records]
            self._page = self._page_for(events)
            self._fan_out(events)
            if len(records) < page:
                return
            await asyncio.sleep(0)  # a long way behind: let the writers in between pages

    def _fan_out(self, events: Sequence[WatchEvent]) -> None:
        if events[-1].revision <= self.head:  # the hub restarted from a newer head meanwhile
            return
        first, last = events[0].revision, events[-1].revision
        self.head = last
        too_slow: list[Watcher] = []
        writes = 0
        for watch_filter, matched in self._index.route(events).items():
            shared: StreamChunk | None = None
            for watcher in self._live[watch_filter]:
                if watcher.final is not None or watcher.cursor >= last:
                    continue
                if watcher.cursor >= first:  # it read part of this batch from storage
                    mine = [event for event in matched if event.revision > watcher.cursor]
                    watcher.cursor = last
                    if not mine:
                        continue
                    chunk = StreamChunk(b"".join(event.frame for event in mine))
                    revision = mine[-1].revision
                else:
                    if shared is None:
                        shared = StreamChunk(b"".join(event.frame for event in matched))
                    chunk, revision = shared, matched[-1].revision
                watcher.cursor = last
                if self._write_live(watcher, chunk, revision):
                    writes += 1
                else:
                    too_slow.append(watcher)
        self._writes_last_round += writes
        for watcher in too_slow:
            self._cut_off(watcher, "buffer_full")
        if self._buffered_total > self.memory_budget:
            self._enforce_budget()

    def _write_live(self, watcher: Watcher, chunk: StreamChunk, revision: int) -> bool:
        """Write unless that would put the stream over its budget. A stream holding
        nothing takes any chunk: a reader that keeps up is never cut off."""
        limit = self.max_buffer_bytes
        size = len(chunk.body)
        if watcher.buffered_seen and watcher.buffered_seen + size > limit:
            self._observe(watcher)
            if watcher.buffered_seen and watcher.buffered_seen + size > limit:
                return False
        watcher.write(chunk, revision)
        self._observe(watcher)
        return True

    def _cut_off(self, watcher: Watcher, why: str) -> None:
        """End a stream that is too slow: a full buffer gets a `reset` saying where
        to resume, sent once the client drains; a client that stopped reading, or
        the streams holding most when the process is over its budget, are closed
        at once (the client resumes with its Last-Event-ID)."""
        if watcher.final is not None and watcher.lost:
            return
        log.warning(
            "watch.cut_off",
            actor=watcher.actor,
            reason="too_slow",
            why=why,
            resume_after=watcher.delivered,
            buffered=watcher.buffered_seen,
        )
        if watcher.final is None:
            self.metrics.watch_cut_off.labels("too_slow").inc()
        self._unjoin(watcher)
        if why == "buffer_full":
            watcher.end(reset_frame("too_slow", resumeAfter=watcher.delivered))
            return
        watcher.abort()
        self._buffered_total -= watcher.buffered_seen
        watcher.buffered_seen = 0
