"""The delivery worker (docs/guarantees.md, "Webhook delivery").

Two loops share one process:
* dispatch: reads the outbox after the dispatch cursor and turns each event
  into one delivery row per matching active subscription (one transaction, so
  an event is dispatched exactly once even with many workers);
* rounds: one transaction (repository/rounds.py) records the attempts that
  finished since the last round and their consequences (retry with backoff,
  Retry-After, 410, the circuit breaker and the disable policy of
  webhooks/policy.py), gives back leases it will not use, and leases the next
  due deliveries (see `repository/claims.py` for the ordering rule); the
  operational events they raise are published after it commits
  (webhooks/notices.py). Leased deliveries wait in memory, per subscription,
  for a free slot: up to CLAIM_AHEAD times the slots are leased, so a freed
  slot starts its next delivery at once while the next round runs. A
  subscription whose attempt failed has its waiting deliveries given back (its
  circuit may open, it may be disabled) in the round that records the failure.

Both loops sleep until woken by the commit feed (storage/commits.py: a commit
in this process, or PostgreSQL NOTIFY from other processes) or by a finished
attempt; a slow poll is only the safety net. On shutdown waiting deliveries
are given back and in-flight attempts finish and are recorded; a killed
worker's leases run out and the deliveries are sent again (at-least-once).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import aiohttp
import structlog

from potok_state.changes.payload import event_body
from potok_state.clock import utc_now
from potok_state.metrics import Metrics
from potok_state.settings import WebhookSettings
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.notices import SubscriptionNotices
from potok_state.webhooks.policy import FailurePolicy
from potok_state.webhooks.rates import DeliveryRates
from potok_state.webhooks.repository.attempts import AttemptResult
from potok_state.webhooks.repository.claims import ClaimedDelivery, ClaimRequest, fair_share
from potok_state.webhooks.repository.dispatch import DISPATCH_BATCH, OutboxDispatch
from potok_state.webhooks.repository.rounds import DeliveryRounds
from potok_state.webhooks.repository.rows import PENDING, SKIPPED, SUCCEEDED
from potok_state.webhooks.sealing import SecretSeal
from potok_state.webhooks.signing import signature_headers
from potok_state.webhooks.targets import (
    InvalidWebhookUrl,
    PublicOnlyResolver,
    RefusedTarget,
    check_target_url,
)

log = structlog.get_logger("potok_state.webhooks")

POLL_SECONDS = 1.0
# How long the dispatcher lets commits gather before reading them: one
# transaction then turns many events into deliveries. Without any active
# subscription it only moves its cursor, so it may wait longer.
DISPATCH_WINDOW_SECONDS = 0.002
IDLE_DISPATCH_WINDOW_SECONDS = 0.1
RECORD_BATCH = 500
# A worker holds leases on up to this many times its slots (and each
# subscription on this many times its share): what is sent and, claimed ahead,
# what is sent while the next round runs.
CLAIM_AHEAD = 8
# While attempts are in flight, the round loop lets freed slots gather this long
# before it claims again: one round then leases many deliveries.
CLAIM_WINDOW_SECONDS = 0.001
STOP_RECORD_SECONDS = 10.0
LEASE_MARGIN = timedelta(seconds=10)
MAX_RETRY_AFTER_SECONDS = 3600
ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True, slots=True)
class SendOutcome:
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    retry_after_seconds: float | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    """The one outbound HTTP client for webhooks (aiohttp: measured far faster
    than httpx under many concurrent deliveries, see bench/REPORT.md)."""

    def __init__(self, *, timeout_ms: int, allow_private: bool, connections: int) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self.allow_private = allow_private
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.connections,
                ttl_dns_cache=60,
                resolver=None if self.allow_private else PublicOnlyResolver(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                headers={"User-Agent": "Potok-State-Webhooks/1"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(
        self, url: str, body: bytes, headers: dict[str, str], *, timeout_ms: int | None = None
    ) -> SendOutcome:
        """One attempt. `timeout_ms`: the subscription's own timeout (the API
        keeps it within WEBHOOK_DELIVERY_TIMEOUT, which the lease is sized for)."""
        started_at = utc_now()
        timeout = (
            self.timeout if timeout_ms is None else aiohttp.ClientTimeout(total=timeout_ms / 1000)
        )
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            # Again at every attempt: a subscription saved before a rule
            # tightened, or a row written around the API, is refused here.
            check_target_url(url, allow_private=self.allow_private)
        except InvalidWebhookUrl as refused:
            return SendOutcome(started_at, 0, None, refused.message, None)
        try:
            # A 3xx is a failure like any other non-2xx: redirects are never
            # followed (docs/webhooks.md).
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                status = response.status
                if not 200 <= status < 300:
                    text = (await response.content.read(ERROR_TEXT_LIMIT)).decode(errors="replace")
                    error = f"HTTP {status}" + (f": {text}" if text else "")
                if status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            error = f"timed out after {timeout.total:g} s"
        except aiohttp.ClientConnectorError as exc:
            # A name that resolves only to refused addresses: say that, not
            # the connector's "Cannot connect to host … [None]".
            cause = exc.os_error
            if isinstance(cause, RefusedTarget):
                error = str(cause)[:ERROR_TEXT_LIMIT]
            else:
                error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
        duration_ms = round((time.perf_counter() - started) * 1000)
        return SendOutcome(started_at, duration_ms, status, error, retry_after)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds = (when - utc_now()).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


@dataclass(frozen=True, slots=True)
class _Finished:
    """An attempt the receiver answered, waiting to be recorded."""

    delivery: ClaimedDelivery
    result: AttemptResult
    duration_ms: int
    retry_in: float
    """Seconds until a retry, should the attempt have failed."""


@dataclass(frozen=True, slots=True)
class _Queued:
    """A claimed delivery waiting for a free slot."""

    delivery: ClaimedDelivery
    send_by: float
    """The latest monotonic time it may start: later, its lease could run out
    while it is sent, and another worker could send it too."""


class DeliveryWorker:
    def __init__(
        self,
        store: SqlStateStore,
        seal: SecretSeal,
        settings: WebhookSettings,
        metrics: Metrics,
        *,
        allow_private: bool,
        concurrency: int = 64,
        per_subscription: int = 16,
        notices: SubscriptionNotices | None = None,
    ) -> None:
        self.dispatcher = OutboxDispatch(store)
        self.rounds = DeliveryRounds(store, seal)
        self.settings = settings
        self.metrics = metrics
        self.policy = FailurePolicy.from_settings(settings)
        self.notices = notices
        self.concurrency = concurrency
        self.per_subscription = per_subscription
        self.sender = WebhookSender(
            timeout_ms=settings.delivery_timeout,
            allow_private=allow_private,
            connections=concurrency,
        )
        self.lease = timedelta(milliseconds=settings.delivery_timeout) + LEASE_MARGIN
        self._outbox = store.commits.outbox_wakeup()
        # Set when deliveries become due in this process (or an attempt
        # finished); other processes hear NOTIFY on DELIVERIES_CHANNEL
        # (repository/dispatch.py).
        self._due = store.commits.deliveries_ready
        self._queued: dict[str, deque[_Queued]] = {}
        self._queued_count = 0
        self._sending: dict[str, int] = {}
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._to_record: list[_Finished] = []
        self._release: list[int] = []
        self._dispatch: asyncio.Task[None] | None = None
        self._round_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._rates = DeliveryRates()

    async def start(self) -> None:
        self._stopping.clear()
        self._dispatch = asyncio.create_task(self._dispatch_loop(), name="webhook-dispatch")
        self._round_task = asyncio.create_task(self._round_loop(), name="webhook-rounds")
        log.info("webhook.worker.started", concurrency=self.concurrency)

    async def stop(self) -> None:
        """Stop claiming, give back what was claimed but not sent, let
        in-flight attempts finish (their timeout bounds the wait) and record
        them, then close the HTTP client."""
        self._stopping.set()
        self._outbox.notify()
        if self._dispatch is not None:
            self._dispatch.cancel()
            await asyncio.gather(self._dispatch, return_exceptions=True)
        for subscription_id in list(self._queued):
            self._drop_queued(subscription_id)
        if self._in_flight:
            await asyncio.wait(
                list(self._in_flight.values()), timeout=self.sender.timeout.total or 30
            )
        if self._round_task is not None:
            # What was sent is recorded before the worker stops.
            self._due.notify()
            await asyncio.wait([self._round_task], timeout=STOP_RECORD_SECONDS)
            self._round_task.cancel()
            await asyncio.gather(self._round_task, return_exceptions=True)
        await self.sender.close()
        log.info("webhook.worker.stopped")

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- dispatch -----------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                dispatched = await self.dispatcher.dispatch(self.attempt_limit)
                caught_up = dispatched.events < DISPATCH_BATCH
                self.metrics.outbox_lag.set(0 if caught_up else await self.dispatcher.outbox_lag())
            except Exception:
                log.exception("webhook.dispatch.failed")
                await asyncio.sleep(POLL_SECONDS)
                continue
            if dispatched.deliveries:
                self._due.notify()
            if not caught_up:
                continue
            if await self._outbox.wait(POLL_SECONDS):
                subscribed = dispatched.subscribed
                await asyncio.sleep(
                    DISPATCH_WINDOW_SECONDS if subscribed else IDLE_DISPATCH_WINDOW_SECONDS
                )

    @property
    def attempt_limit(self) -> int:
        return 1 + self.settings.max_retries

    # -- rounds: record, release, claim ---------------------------------------------

    @property
    def _held(self) -> int:
        """Deliveries this worker holds leases on: queued, sending, answered."""
        return self._queued_count + len(self._in_flight) + len(self._to_record)

    def _claim_request(self) -> ClaimRequest | None:
        """What to claim now: enough to fill every slot once more than they
        hold, so a freed slot starts its next delivery without waiting for
        the database."""
        room = CLAIM_AHEAD * self.concurrency - self._held
        if self._stopping.is_set() or room <= 0:
            return None
        held: dict[str, int] = dict(self._sending)
        for subscription_id, queued in self._queued.items():
            held[subscription_id] = held.get(subscription_id, 0) + len(queued)
        return ClaimRequest(
            limit=room,
            lease=self.lease,
            held=held,
            per_subscription=CLAIM_AHEAD * self.per_subscription,
            concurrency=CLAIM_AHEAD * self.concurrency,
            rates=self._rates,
        )

    async def _round_loop(self) -> None:
        """Rounds (repository/rounds.py) for as long as there is something to
        record, give back or claim; in between, sleep until deliveries are due
        or an attempt finished."""
        claim = True
        while True:
            # Notified: deliveries became due, or an attempt finished (its
            # entity's next event may be due once it is recorded).
            claim = self._due.take() or claim
            finished = self._to_record[:RECORD_BATCH]
            del self._to_record[:RECORD_BATCH]
            release, self._release = self._release, []
            request = self._claim_request() if claim else None
            if finished or release or request is not None:
                claimed = await self._round(finished, release, request)
                # A full claim left due work behind: claim again at once.
                claim = request is not None and claimed >= request.limit
                continue
            if self._stopping.is_set() and not self._in_flight and not self._to_record:
                return
            if await self._due.wait(POLL_SECONDS) and self._in_flight:
                # Let freed slots gather: one round then claims many.
                await asyncio.sleep(CLAIM_WINDOW_SECONDS)
            claim = True

    async def _round(
        self,
        finished: list[_Finished],
        release: list[int],
        request: ClaimRequest | None,
    ) -> int:
        try:
            result = await self.rounds.run(
                [f.result for f in finished], self.policy, request, release
            )
        except Exception:
            # Their leases run out and they are sent again: at-least-once.
            log.exception("webhook.round.failed", attempts=len(finished), released=len(release))
            await asyncio.sleep(POLL_SECONDS)
            return 0
        if request is not None:
            token_in = self._rates.next_token_in()
            if token_in is not None:
                # A rate-limited subscription may go on then.
                asyncio.get_running_loop().call_later(token_in, self._due.notify)
        recorded = result.recorded
        for done, status in zip(finished, recorded.statuses, strict=True):
            self._recorded_attempt(done, status)
        loop = asyncio.get_running_loop()
        for subscription_id in recorded.circuits_opened:
            self.metrics.circuits_opened.inc()
            log.warning("webhook.circuit.opened", subscriptionId=subscription_id)
        for probe_at in recorded.probes_due:
            wait = (probe_at - utc_now()).total_seconds()
            loop.call_later(max(wait, 0.0), self._due.notify)
        send_by = time.monotonic() + (self.lease - LEASE_MARGIN / 2).total_seconds()
        for delivery in result.claimed:
            timeout = self._timeout_seconds(delivery)
            queue = self._queued.setdefault(delivery.subscription_id, deque())
            queue.append(_Queued(delivery, send_by - timeout))
            self._queued_count += 1
        self._pump()
        for notice in recorded.notices:
            if self.notices is not None:
                await self.notices.publish(notice)
        return len(result.claimed)

    def _timeout_seconds(self, delivery: ClaimedDelivery) -> float:
        timeout_ms = delivery.timeout_ms or self.settings.delivery_timeout
        return timeout_ms / 1000

    def _drop_queued(self, subscription_id: str) -> None:
        """Deliveries of this subscription claimed but not started go back to
        the queue in the database (their subscription failed, its circuit may
        be open or it may be disabled now; or the worker stops)."""
        queue = self._queued.pop(subscription_id, None)
        if queue:
            self._queued_count -= len(queue)
            # One too late to start is left to its lease: once that ran out,
            # another worker may hold it, and a release would end that lease.
            now = time.monotonic()
            self._release.extend(q.delivery.id for q in queue if q.send_by >= now)

    # -- sending ------------------------------------------------------------------

    def _pump(self) -> None:
        """Start queued deliveries while slots are free: a subscription may
        send its fair share of the slots at once (claims.py, `fair_share`),
        taken in turns so one subscription's backlog does not go first."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0 or not self._queued:
            return
        working = set(self._queued) | set(self._sending)
        share = fair_share(len(working), self.concurrency, self.per_subscription)
        now = time.monotonic()
        started = True
        while free > 0 and started:
            started = False
            for subscription_id, queue in list(self._queued.items()):
                if self._sending.get(subscription_id, 0) >= share:
                    continue
                queued = queue.popleft()
                self._queued_count -= 1
                if not queue:
                    del self._queued[subscription_id]
                if queued.send_by < now:
                    # Too late to start: the lease runs out and it is claimed again.
                    continue
                self._start(queued.delivery)
                started = True
                free -= 1
                if free == 0:
                    return

    def _start(self, delivery: ClaimedDelivery) -> None:
        subscription_id = delivery.subscription_id
        self._sending[subscription_id] = self._sending.get(subscription_id, 0) + 1
        task = asyncio.create_task(self._attempt(delivery))
        self._in_flight[delivery.id] = task
        task.add_done_callback(functools.partial(self._finished, delivery))

    def _finished(self, delivery: ClaimedDelivery, _: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery.id, None)
        remaining = self._sending.get(delivery.subscription_id, 1) - 1
        if remaining > 0:
            self._sending[delivery.subscription_id] = remaining
        else:
            self._sending.pop(delivery.subscription_id, None)
        # A slot is free: the next claimed delivery starts, and the next round
        # records this one and claims more.
        self._pump()
        self._due.notify()

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        body = event_body(delivery.event)
        headers = signature_headers(
            delivery.secret,
            event_id=delivery.event.event_id,
            event=delivery.event.event,
            body=body,
            attempt=delivery.attempt,
            timestamp=int(time.time()),
            previous_secret=delivery.previous_secret,
        )
        outcome = await self.sender.send(
            delivery.url, body, headers, timeout_ms=delivery.timeout_ms
        )
        delay = self.settings.retry_delay / 1000 * 2 ** (delivery.attempt - 1)
        if outcome.retry_after_seconds is not None:
            delay = max(delay, outcome.retry_after_seconds)
        result = AttemptResult(
            delivery_id=delivery.id,
            subscription_id=delivery.subscription_id,
            attempt=delivery.attempt,
            attempt_limit=delivery.attempt_limit,
            started_at=outcome.started_at,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            error=outcome.error,
            succeeded=outcome.succeeded,
            gone=outcome.status_code == 410,
            retry_at=outcome.started_at
            + timedelta(milliseconds=outcome.duration_ms)
            + timedelta(seconds=delay),
            probe=delivery.probe,
        )
        if not outcome.succeeded:
            # The subscription failed: what it has queued waits until this
            # failure is recorded (its circuit may open, it may be disabled).
            self._drop_queued(delivery.subscription_id)
        # Recorded with others in the next round (until then the delivery stays
        # pending and leased, so neither it nor the next event of its entity is
        # claimed).
        self._to_record.append(_Finished(delivery, result, outcome.duration_ms, delay))

    def _recorded_attempt(self, finished: _Finished, status: str) -> None:
        delivery, result = finished.delivery, finished.result
        outcome_label = {SUCCEEDED: "succeeded", PENDING: "retrying", SKIPPED: "skipped"}.get(
            status, "failed"
        )
        self.metrics.deliveries.labels(outcome=outcome_label).inc()
        self.metrics.delivery_latency.observe(finished.duration_ms / 1000)
        # A failed attempt that will be retried is a warning, one that ends the
        # delivery an error (someone must look at the receiver).
        report = (
            log.info if status == SUCCEEDED else log.warning if status == PENDING else log.error
        )
        report(
            "webhook.attempt",
            deliveryId=delivery.id,
            subscriptionId=delivery.subscription_id,
            eventType=delivery.event.event,
            revision=delivery.event.revision,
            attempt=delivery.attempt,
            statusCode=result.status_code,
            durationMs=finished.duration_ms,
            outcome=outcome_label,
            error=result.error,
        )
        if status == PENDING:
            # Its retry is due then.
            asyncio.get_running_loop().call_later(finished.retry_in, self._due.notify)
