"""The watch hub: one per process. It tails the change feed from storage and
hands every new event to the open watch streams (docs/watch.md).

* One reader for all streams: the hub is woken by the commit feed (commits of
  this process; on PostgreSQL, every replica's commits through LISTEN/NOTIFY)
  and polls as a safety net (on SQLite, the only way to hear of other
  processes on the same file). It reads what is new once, encodes each event
  once, and joins one chunk per distinct filter.
* A stream first replays what it missed from storage, then joins the live
  fan-out at the exact revision it has reached (no gap, no duplicate: the
  join happens with no await between the check and the registration).
* Writers never wait for readers: the fan-out only appends to bounded
  per-stream buffers. A stream that falls WATCH_QUEUE_SIZE events behind is cut
  off with a `reset` event saying where to resume.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson
import structlog

from potok_state.changes.model import EventRecord
from potok_state.changes.payload import event_body
from potok_state.changes.selection import event_selected
from potok_state.kit.errors import TooManyRequests, Unavailable
from potok_state.metrics import Metrics
from potok_state.storage.port import StateStore
from potok_state.wakeup import Wakeup

log = structlog.get_logger(__name__)

READ_BATCH = 1000
RETRY_AFTER_STORE_ERROR = 1.0
HEARTBEAT = b": heartbeat\n\n"
# Reads of new events are spaced by this much per open stream (at most
# MAX_FAN_OUT_PAUSE): each round costs every stream a wake-up and a socket
# write, so with many streams fewer, larger rounds keep the loop free for
# writers (1,000 streams: a round per 20 ms at most).
FAN_OUT_PAUSE_PER_STREAM = 0.000_05
MAX_FAN_OUT_PAUSE = 0.08

SendChunk = Callable[[bytes, int], Awaitable[None]]
"""Send SSE bytes that end with the event of the given revision."""


class WatchEvent:
    """One change as the watch streams see it, encoded once as an SSE frame."""

    __slots__ = ("_data", "_statuses", "entity", "entity_id", "event", "frame", "revision")

    def __init__(self, record: EventRecord) -> None:
        self.revision = record.revision
        self.event = record.event
        self.entity = record.entity
        self.entity_id = record.entity_id
        self._data = record.data
        self._statuses: frozenset[str] | None = None
        self.frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (
            record.revision,
            record.event.encode(),
            event_body(record),
        )

    @property
    def statuses(self) -> frozenset[str]:
        """The statuses the entity left and entered (empty for a custom event)."""
        if self._statuses is None:
            if self.entity is None:
                self._statuses = frozenset()
            else:
                data = orjson.loads(self._data)
                self._statuses = frozenset(
                    status
                    for status in (data.get("previousStatus"), data.get("newStatus"))
                    if isinstance(status, str)
                )
        return self._statuses


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """What a stream asked for; an empty field matches everything."""

    entity: str | None = None
    readable: frozenset[str] | None = None
    """The types the stream's key may read (None: all, and custom events)."""
    id_prefix: str | None = None
    statuses: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()

    def matches(self, event: WatchEvent) -> bool:
        if self.entity is not None and event.entity != self.entity:
            return False
        if self.readable is not None and event.entity not in self.readable:
            return False
        if self.id_prefix is not None and not (event.entity_id or "").startswith(self.id_prefix):
            return False
        if self.events and not event_selected(self.events, event.event):
            return False
        return not self.statuses or not self.statuses.isdisjoint(event.statuses)


def reset_frame(reason: str, **fields: int | None) -> bytes:
    """The last event of a stream the client must resume differently. No `id:`,
    so an EventSource keeps the id of the last event it really received."""
    return b"event: reset\ndata: %s\n\n" % orjson.dumps({"reason": reason, **fields})


@dataclass(eq=False)
class Watcher:
    """One open stream: its filter, its position and its unsent chunks."""

    actor: str
    filter: WatchFilter
    cursor: int
    """Every event up to here has been sent or found not to match."""
    limit: int
    delivered: int = 0
    """The revision of the last event the transport accepted."""
    final: bytes | None = None
    """Set when the stream must end: the bytes to send last."""
    sending: bool = False
    task: asyncio.Task[object] | None = None
    cut_while_sending: bool = False
    sent_since_beat: bool = False
    _heartbeat_due: bool = False
    _chunks: list[bytes] = field(default_factory=list)
    _queued: int = 0
    _last: int = 0
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, chunk: bytes, count: int, revision: int) -> bool:
        """Queue events; False when that would put the stream too far behind.
        A stream with nothing queued takes any batch: one atomic change set may
        be larger than the limit, and a reader that keeps up is never cut."""
        if self._queued and self._queued + count > self.limit:
            return False
        self._chunks.append(chunk)
        self._queued += count
        self._last = revision
        self._ready.set()
        return True

    def end(self, final: bytes = b"") -> None:
        """End the stream after `final`; what is still queued is dropped. A
        stream stuck sending to a client that does not read is cancelled."""
        if self.final is not None:
            return
        self.final = final
        self._chunks.clear()
        self._queued = 0
        self._ready.set()
        if self.sending and self.task is not None:
            self.cut_while_sending = True
            self.task.cancel()

    def beat(self) -> None:
        """Ask for a heartbeat if nothing was sent since the last one."""
        if not self.sent_since_beat and self.final is None:
            self._heartbeat_due = True
            self._ready.set()
        self.sent_since_beat = False

    async def next_chunk(self) -> tuple[bytes, int]:
        """What to send next (the queued events, or a heartbeat) and the
        revision it reaches."""
        await self._ready.wait()
        self._ready.clear()
        if self._chunks:
            chunk = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks.clear()
            self._queued = 0
            self._heartbeat_due = False
            return chunk, self._last
        if self._heartbeat_due:
            self._heartbeat_due = False
            return HEARTBEAT, self.delivered
        return b"", self.delivered


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
        queue_size: int,
        poll_seconds: float,
        heartbeat_seconds: float,
    ) -> None:
        self.store = store
        self.heartbeat_seconds = heartbeat_seconds
        self.metrics = metrics
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.poll_seconds = poll_seconds
        self.head = 0
        """The revision up to which events were handed to live streams."""
        self._wakeup = wakeup
        self._watchers: set[Watcher] = set()
        self._live: dict[WatchFilter, list[Watcher]] = {}
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
        watcher = Watcher(
            actor, watch_filter, bounds.head if after is None else after, self.queue_size
        )
        watcher.delivered = watcher.cursor
        self._watchers.add(watcher)
        self.metrics.watch_clients.inc()
        if self._task is None:
            # Contexts of their own, not the first stream's request (its log fields).
            self._task = asyncio.create_task(
                self._tail(), name="watch-hub", context=contextvars.Context()
            )
            self._ticker = asyncio.create_task(
                self._beat(), name="watch-heartbeats", context=contextvars.Context()
            )
        return Opened(watcher)

    def _release(self, actor: str) -> None:
        self._per_actor[actor] -= 1
        if not self._per_actor[actor]:
            del self._per_actor[actor]

    async def catch_up(self, watcher: Watcher, send: SendChunk) -> None:
        """Replay from storage what the stream missed, then join the live fan-out."""
        while watcher.final is None:
            if watcher.cursor >= self.head:
                self._live.setdefault(watcher.filter, []).append(watcher)
                return
            records = await self.store.changes(watcher.cursor, READ_BATCH)
            if not records:
                watcher.cursor = max(watcher.cursor, self.head)
                continue
            chunk = b"".join(
                event.frame for event in map(WatchEvent, records) if watcher.filter.matches(event)
            )
            watcher.cursor = records[-1].revision
            if chunk:
                await send(chunk, watcher.cursor)

    def leave(self, watcher: Watcher) -> None:
        if watcher not in self._watchers:
            return
        self._watchers.discard(watcher)
        self._release(watcher.actor)
        self.metrics.watch_clients.dec()
        group = self._live.get(watcher.filter)
        if group is not None and watcher in group:
            group.remove(watcher)
            if not group:
                del self._live[watcher.filter]

    def close(self) -> None:
        """End every stream (the server is stopping); clients resume elsewhere."""
        self._closed = True
        for watcher in list(self._watchers):
            if watcher.final is None:
                self.metrics.watch_cut_off.labels("shutdown").inc()
            watcher.end()
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
        self._task = self._ticker = None

    async def _beat(self) -> None:
        """One timer for every stream: each that sent nothing for a heartbeat
        interval sends a comment line."""
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            for watcher in list(self._watchers):
                watcher.beat()

    # -- the tail -------------------------------------------------------------

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
            pause = min(MAX_FAN_OUT_PAUSE, len(self._watchers) * FAN_OUT_PAUSE_PER_STREAM)
            if pause > 0.001:
                await asyncio.sleep(pause)

    async def _read_new(self) -> None:
        while self._watchers:
            records = await self.store.changes(self.head, READ_BATCH)
            if not records:
                return
            self._fan_out([WatchEvent(record) for record in records])
            if len(records) < READ_BATCH:
                return

    def _fan_out(self, events: Sequence[WatchEvent]) -> None:
        if events[-1].revision <= self.head:  # the hub restarted from a newer head meanwhile
            return
        first, last = events[0].revision, events[-1].revision
        self.head = last
        too_slow: list[Watcher] = []
        for watch_filter, watchers in self._live.items():
            matched = [event for event in events if watch_filter.matches(event)]
            chunk = b"".join(event.frame for event in matched)
            for watcher in watchers:
                if watcher.cursor >= last:
                    continue
                mine, own_chunk = matched, chunk
                if watcher.cursor >= first:  # it read part of this batch from storage
                    mine = [event for event in matched if event.revision > watcher.cursor]
                    own_chunk = b"".join(event.frame for event in mine)
                watcher.cursor = last
                if mine and not watcher.push(own_chunk, len(mine), mine[-1].revision):
                    too_slow.append(watcher)
        for watcher in too_slow:
            self._cut_off(watcher)

    def _cut_off(self, watcher: Watcher) -> None:
        log.warning(
            "watch.cut_off",
            actor=watcher.actor,
            reason="too_slow",
            resume_after=watcher.delivered,
            limit=self.queue_size,
        )
        self.metrics.watch_cut_off.labels("too_slow").inc()
        self.leave(watcher)
        watcher.end(reset_frame("too_slow", resumeAfter=watcher.delivered))
