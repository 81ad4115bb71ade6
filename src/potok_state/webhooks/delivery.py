"""The delivery worker (docs/guarantees.md, "Webhook delivery").

Two loops share one process:
* dispatch: reads the outbox after the dispatch cursor and turns each event
  into one delivery row per matching active subscription (one transaction, so
  an event is dispatched exactly once even with many workers);
* deliver: leases due deliveries in batches (see `repository/claims.py` for
  the ordering rule), sends each with its signatures, and records the attempts
  that finished meanwhile, and their consequences (retry with backoff,
  Retry-After, 410, the circuit breaker and the disable policy of
  webhooks/policy.py), in one transaction per batch; the operational events
  they raise are published after it commits (webhooks/notices.py).

Both loops sleep until woken by the commit feed (storage/commits.py: a commit
in this process, or PostgreSQL NOTIFY from other processes) or by a finished
attempt; a slow poll is only the safety net. In-flight attempts finish on
shutdown; a killed worker's leases run out and the deliveries are sent again
(at-least-once).
"""

from __future__ import annotations

import asyncio
import functools
import time
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
from potok_state.webhooks.repository.attempts import AttemptRecorder, AttemptResult
from potok_state.webhooks.repository.claims import ClaimedDelivery, DeliveryClaims
from potok_state.webhooks.repository.dispatch import DISPATCH_BATCH, OutboxDispatch
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
# Attempts answered but not yet recorded, per slot, before claiming pauses.
RECORD_BACKLOG_PER_SLOT = 4
# While attempts are in flight, the claim loop lets freed slots gather this long
# before it claims again: one claim transaction then leases many deliveries.
CLAIM_WINDOW_SECONDS = 0.001
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
        self.claims = DeliveryClaims(store, seal)
        self.attempts = AttemptRecorder(store)
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
        # Set when deliveries become due in this process; other processes hear
        # NOTIFY on DELIVERIES_CHANNEL (repository/dispatch.py).
        self._due = store.commits.deliveries_ready
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._per_subscription: dict[str, int] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._to_record: list[_Finished] = []
        self._record_ready = asyncio.Event()
        self._recorded = asyncio.Event()
        self._stopping = asyncio.Event()
        self._rates = DeliveryRates()

    async def start(self) -> None:
        self._stopping.clear()
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="webhook-dispatch"),
            asyncio.create_task(self._deliver_loop(), name="webhook-deliver"),
        ]
        self._recorder = asyncio.create_task(self._record_loop(), name="webhook-record")
        log.info("webhook.worker.started", concurrency=self.concurrency)

    async def stop(self) -> None:
        """Stop claiming, let in-flight attempts finish (their timeout bounds
        the wait), then close the HTTP client."""
        self._stopping.set()
        self._outbox.notify()
        self._due.notify()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._in_flight:
            await asyncio.wait(
                list(self._in_flight.values()), timeout=self.sender.timeout.total or 30
            )
        if self._recorder is not None:
            # What was sent is recorded before the worker stops.
            while self._to_record and not self._recorder.done():
                self._record_ready.set()
                await asyncio.sleep(0.01)
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
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

    # -- delivery -----------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        while not self._stopping.is_set():
            if len(self._to_record) >= RECORD_BACKLOG_PER_SLOT * self.concurrency:
                # Recording lags: let it catch up before sending more.
                self._recorded.clear()
                await self._recorded.wait()
                continue
            free = self.concurrency - len(self._in_flight)
            claimed: list[ClaimedDelivery] = []
            if free > 0:
                try:
                    claimed = await self.claims.claim_due(
                        limit=free,
                        lease=self.lease,
                        in_flight=self._per_subscription,
                        per_subscription=self.per_subscription,
                        concurrency=self.concurrency,
                        rates=self._rates,
                    )
                except Exception:
                    log.exception("webhook.claim.failed")
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                token_in = self._rates.next_token_in()
                if token_in is not None:
                    # A rate-limited subscription may go on then.
                    asyncio.get_running_loop().call_later(token_in, self._due.notify)
            for delivery in claimed:
                self._per_subscription[delivery.subscription_id] = (
                    self._per_subscription.get(delivery.subscription_id, 0) + 1
                )
                task = asyncio.create_task(self._attempt(delivery))
                self._in_flight[delivery.id] = task
                task.add_done_callback(functools.partial(self._finished, delivery))
            if claimed and len(claimed) == free:
                continue
            if await self._due.wait(POLL_SECONDS) and self._in_flight:
                await asyncio.sleep(CLAIM_WINDOW_SECONDS)

    def _finished(self, delivery: ClaimedDelivery, _: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery.id, None)
        remaining = self._per_subscription.get(delivery.subscription_id, 1) - 1
        if remaining > 0:
            self._per_subscription[delivery.subscription_id] = remaining
        else:
            self._per_subscription.pop(delivery.subscription_id, None)
        # A slot is free.
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
            retry_at=utc_now() + timedelta(seconds=delay),
            probe=delivery.probe,
        )
        # The slot is free once the receiver answered; the attempt is recorded
        # with others in the next batch (until then the delivery stays pending
        # and leased, so neither it nor the next event of its entity is claimed).
        self._to_record.append(_Finished(delivery, result, outcome.duration_ms, delay))
        self._record_ready.set()

    async def _record_loop(self) -> None:
        """Record every attempt that finished since the last record, in one
        transaction, then count, log and schedule what each one led to."""
        while True:
            await self._record_ready.wait()
            self._record_ready.clear()
            while self._to_record:
                batch = self._to_record[:RECORD_BATCH]
                del self._to_record[:RECORD_BATCH]
                try:
                    recorded = await self.attempts.record_attempts(
                        [finished.result for finished in batch], self.policy
                    )
                except Exception:
                    # Their leases run out and they are sent again: at-least-once.
                    log.exception("webhook.attempt.record_failed", attempts=len(batch))
                    continue
                finally:
                    self._recorded.set()
                for finished, status in zip(batch, recorded.statuses, strict=True):
                    self._recorded_attempt(finished, status)
                loop = asyncio.get_running_loop()
                for subscription_id in recorded.circuits_opened:
                    self.metrics.circuits_opened.inc()
                    log.warning("webhook.circuit.opened", subscriptionId=subscription_id)
                for probe_at in recorded.probes_due:
                    wait = (probe_at - utc_now()).total_seconds()
                    loop.call_later(max(wait, 0.0), self._due.notify)
                for notice in recorded.notices:
                    if self.notices is not None:
                        await self.notices.publish(notice)

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
        # Recorded: the next event of this entity (or this one's retry) may be due.
        if status == PENDING:
            asyncio.get_running_loop().call_later(finished.retry_in, self._due.notify)
        else:
            self._due.notify()
