"""The stream publisher: the outbox relayed into NATS JetStream (docs/stream.md).

One process at a time — the one holding the `stream_publisher` lease — reads
the committed outbox after its position, in revision order, and publishes each
event with `publish_async` (many in flight on one connection, acks collected
per batch). The position moves only after the acks, so a crash, a NATS outage
or a refusal means the batch is published again, never skipped.

Exactly one message per event, in revision order, holds by two headers rather
than by the lease alone (a process may keep publishing for a moment after its
lease lapsed):

* `Nats-Msg-Id` = the event id: JetStream answers a re-publish within its
  duplicate window with the stored message's ack instead of storing it again;
* `Nats-Expected-Last-Sequence`: each message is stored only right after the
  one the publisher sent before it, so a lost or refused message is never
  overtaken by a later one. After any failure the publisher reads the stream's
  last message of its subjects (its `Potok-Revision` header says how far the
  stream has the outbox) and goes on after it — whatever the duplicate window.

Other processes only watch the lease, and take it over when it lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import structlog
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge

from potok_state.background import BackgroundLoop
from potok_state.changes.model import EventRecord
from potok_state.changes.payload import event_body
from potok_state.clock import utc_now
from potok_state.settings import NatsSettings
from potok_state.storage.sql import SqlStateStore
from potok_state.stream import connection, messages, position
from potok_state.stream.position import Backlog

log = structlog.get_logger("potok_state.stream")

BATCH = 1_000
LEASE_SECONDS = 5.0
RENEW_SECONDS = 1.0
# How often a process that does not publish looks whether the lease lapsed.
STANDBY_POLL_SECONDS = 1.0
MEASURE_SECONDS = 1.0
FAILURE_PAUSE = (0.1, 5.0)
# The oldest unpublished event may be this old before the stream is degraded.
STALE_SECONDS = 10.0


class StreamState(StrEnum):
    DISABLED = "disabled"
    OK = "ok"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class StreamStatus:
    state: StreamState
    stream: str
    revision: int
    backlog: int
    lag_seconds: float
    publisher: str | None
    error: str | None


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "potok_stream_published_total",
            "Events stored in the JetStream stream (its rate is the publish rate).",
            registry=registry,
        )
        self.failures = Counter(
            "potok_stream_publish_failures_total",
            "Publish batches that failed (NATS unreachable, no ack in time, refused).",
            registry=registry,
        )
        self.lag_revisions = Gauge(
            "potok_stream_lag_revisions",
            "Revisions committed but not yet in the JetStream stream.",
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "potok_stream_lag_seconds",
            "Age of the oldest event not yet in the JetStream stream (0: none).",
            registry=registry,
        )
        self.leader = Gauge(
            "potok_stream_publisher",
            "1 while this process is the one publishing to the JetStream stream.",
            registry=registry,
        )


class PublishFailed(Exception):
    pass


class StreamPublisher:
    def __init__(
        self,
        store: SqlStateStore,
        settings: NatsSettings,
        metrics: StreamMetrics,
        *,
        poll_seconds: float,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.holder = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.last_error: str | None = None
        self._wakeup = store.commits.outbox_wakeup()
        self._loop = BackgroundLoop("stream-publisher", self._run)
        self._held_until = 0.0  # monotonic; 0: not the publisher
        self._revision = 0
        self._sequence = 0
        self._synced = False
        self._measured_at = 0.0
        self._nats: Nats | None = None
        self._js: JetStreamContext | None = None

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._held_until

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.db.write(position.ensure_row)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        with contextlib.suppress(Exception):  # the database may be gone already
            await self.store.db.write(lambda tx: position.release(tx, self.holder))
        await self._disconnect()

    async def _disconnect(self) -> None:
        client, self._nats, self._js = self._nats, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    # -- status ---------------------------------------------------------------------

    async def status(self) -> StreamStatus:
        """Where the stream is against the outbox, as the database says (the same
        answer from every process), with this process's error if it publishes."""
        backlog = await self.store.db.read(position.read_backlog)
        self._observe(backlog)
        lag = _lag_seconds(backlog)
        now = utc_now()
        held = backlog.position.held_until is not None and backlog.position.held_until >= now
        stale = backlog.revisions > 0 and (lag > STALE_SECONDS or not held)
        failing = self.leading and self.last_error is not None
        return StreamStatus(
            state=StreamState.DEGRADED if stale or failing else StreamState.OK,
            stream=self.settings.stream,
            revision=backlog.position.revision,
            backlog=backlog.revisions,
            lag_seconds=lag,
            publisher=backlog.position.holder if held else None,
            error=self.last_error if self.leading else None,
        )

    def _observe(self, backlog: Backlog) -> None:
        self._measured_at = time.monotonic()
        self.metrics.lag_revisions.set(backlog.revisions)
        self.metrics.lag_seconds.set(_lag_seconds(backlog))

    async def _measure(self) -> None:
        if time.monotonic() - self._measured_at >= MEASURE_SECONDS:
            self._observe(await self.store.db.read(position.read_backlog))

    # -- the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                more = await self._step()
                failures = 0
                self.last_error = None
            except Exception as exc:  # NATS or the database failed; the batch is sent again
                failures += 1
                self._synced = False
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.metrics.failures.inc()
                log.warning("stream.publish_failed", error=self.last_error, failures=failures)
                first, longest = FAILURE_PAUSE
                await asyncio.sleep(min(longest, first * 2 ** min(failures - 1, 10)))
                continue
            self.metrics.leader.set(1 if self.leading else 0)
            if more:
                continue
            if self.leading:
                await self._wakeup.wait(min(self.poll_seconds, RENEW_SECONDS))
            else:
                await asyncio.sleep(STANDBY_POLL_SECONDS)

    async def _step(self) -> bool:
        """Publish one batch if this process holds the lease; True when more
        may be waiting right now."""
        if not await self._lead():
            await self._measure()
            return False
        js = await self._jetstream()
        if not self._synced:
            await self._resync(js)
        records = await self.store.changes(self._revision, BATCH)
        if not records:
            self.metrics.lag_revisions.set(0)
            self.metrics.lag_seconds.set(0)
            self._measured_at = time.monotonic()
            return False
        await self._measure()
        await self._publish(js, records)
        return len(records) == BATCH

    async def _lead(self) -> bool:
        """Hold the lease: renew it when due, take it when it lapsed."""
        now = time.monotonic()
        if now < self._held_until - (LEASE_SECONDS - RENEW_SECONDS):
            return True
        if not self.leading:
            current = await self.store.db.read(position.read_position)
            if current.held_by_other(self.holder, utc_now()):
                return False
        claimed = await self.store.db.write(
            lambda tx: position.claim(tx, self.holder, LEASE_SECONDS)
        )
        if claimed is None:
            if self.leading:
                log.warning("stream.lease_lost", holder=self.holder)
            self._held_until = 0.0
            return False
        if not self.leading:
            log.info("stream.publishing", holder=self.holder, revision=claimed)
            self._revision = claimed
            self._synced = False
        self._held_until = now + LEASE_SECONDS
        return True

    async def _jetstream(self) -> JetStreamContext:
        if self._js is None or self._nats is None or self._nats.is_closed:
            await self._disconnect()
            self._nats = await connection.connect(self.settings)
            js = connection.jetstream(self._nats, self.settings)
            try:
                await connection.ensure_stream(js, self.settings)
            except BaseException:
                await self._disconnect()
                raise
            self._js = js
            self._synced = False
        return self._js

    async def _resync(self, js: JetStreamContext) -> None:
        """Learn the stream's last sequence, and how far it has the outbox from
        its last message of our subjects (it may be ahead of the stored position:
        acks lost to a crash or an outage)."""
        info = await js.stream_info(self.settings.stream)
        sequence = info.state.last_seq
        in_stream: int | None = None
        with contextlib.suppress(NotFoundError):
            last = await js.get_last_msg(self.settings.stream, f"{self.settings.subject_prefix}.>")
            value = (last.headers or {}).get(messages.REVISION_HEADER)
            in_stream = int(value) if value is not None and value.isdigit() else None
        if in_stream is not None and in_stream > self._revision:
            head = await self.store.head_revision()
            if in_stream <= head:
                self._revision = in_stream
                await self._advance(in_stream, sequence)
            else:
                log.error(
                    "stream.ahead_of_store",
                    stream=self.settings.stream,
                    stream_revision=in_stream,
                    head=head,
                )
        self._sequence = sequence
        self._synced = True
        log.info("stream.synced", revision=self._revision, sequence=sequence)

    async def _publish(self, js: JetStreamContext, records: list[EventRecord]) -> None:
        prefix = self.settings.subject_prefix
        futures: list[asyncio.Future[PubAck]] = []
        try:
            expected = self._sequence
            for record in records:
                futures.append(
                    await js.publish_async(
                        messages.subject(prefix, record),
                        event_body(record),
                        headers=messages.headers(record, expected),
                    )
                )
                expected += 1
            await asyncio.wait(futures, timeout=self.settings.publish_timeout / 1000)
        finally:
            for future in futures:
                future.cancel()  # no-op once answered; frees the slot of one that was not
        stored, sequence, error = _acknowledged(futures)
        if stored:
            self.metrics.published.inc(stored)
            self._revision = records[stored - 1].revision
            self._sequence = sequence
            await self._advance(self._revision, sequence)
        if error is not None:
            raise PublishFailed(
                f"revision {records[stored].revision} was not stored: {error}"
            ) from error

    async def _advance(self, revision: int, sequence: int) -> None:
        moved = await self.store.db.write(
            lambda tx: position.advance(tx, self.holder, revision, sequence, LEASE_SECONDS)
        )
        if moved:
            self._held_until = time.monotonic() + LEASE_SECONDS
        else:
            # Another process took the lease; it goes on from the stream itself.
            self._held_until = 0.0


def _acknowledged(
    futures: list[asyncio.Future[PubAck]],
) -> tuple[int, int, BaseException | None]:
    """How many of the batch were stored, in order, the stream sequence of the
    last of them, and why the next one was not (None: all were)."""
    stored, sequence = 0, 0
    error: BaseException | None = None
    for future in futures:
        if future.cancelled():
            error = error or TimeoutError("no ack from JetStream in time")
            continue
        exception = future.exception()  # retrieved for every future, used for the first
        if error is not None:
            continue
        if exception is not None:
            error = exception
            continue
        stored += 1
        sequence = future.result().seq
    return stored, sequence, error


def _lag_seconds(backlog: Backlog) -> float:
    if backlog.oldest_unpublished_at is None:
        return 0.0
    return round(max(0.0, (utc_now() - backlog.oldest_unpublished_at).total_seconds()), 3)
