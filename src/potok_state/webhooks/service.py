"""Subscriptions and the delivery log: validation, secrets and their rotation,
re-enabling, retry, replay, ping (docs/webhooks.md)."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

import orjson

from potok_state.changes.model import (
    EventRecord,
)
from potok_state.changes.payload import event_body
from potok_state.clock import as_utc, utc_now
from potok_state.events.service import RevisionPruned, check_kept
from potok_state.kit.errors import Conflict, InvalidInput, NotFound
from potok_state.settings import WebhookSettings
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.delivery import WebhookSender
from potok_state.webhooks.notices import Notice, SubscriptionNotices
from potok_state.webhooks.repository.delivery_log import DeliveryLog
from potok_state.webhooks.repository.health import HEALTHY
from potok_state.webhooks.repository.rows import FAILED, DeliveryRow, SubscriptionRow
from potok_state.webhooks.repository.subscriptions import SubscriptionRepository
from potok_state.webhooks.schemas import (
    Attempt,
    Delivery,
    DeliveryPage,
    ReplayRequest,
    ReplayResult,
    RotateSecretRequest,
    SecretRotated,
    Subscription,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPatch,
    TestResult,
)
from potok_state.webhooks.sealing import SecretSeal
from potok_state.webhooks.signing import generate_secret, signature_headers
from potok_state.webhooks.targets import check_target_url

MAX_REPLAY_EVENTS = 10_000


class SubscriptionNotFound(NotFound):
    code = "subscription_not_found"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"


class DeliveryNotFailed(Conflict):
    code = "delivery_not_failed"


class SubscriptionDisabled(Conflict):
    code = "subscription_disabled"


class InvalidSubscriptionLimit(InvalidInput):
    code = "invalid_subscription_limit"


class ReplayNeedsOneSource(InvalidInput):
    code = "invalid_replay"


class WebhookService:
    def __init__(
        self,
        store: SqlStateStore,
        seal: SecretSeal,
        settings: WebhookSettings,
        *,
        allow_private: bool,
        notices: SubscriptionNotices | None = None,
    ) -> None:
        self.store = store
        self.subscriptions = SubscriptionRepository(store, seal)
        self.delivery_log = DeliveryLog(store)
        self.settings = settings
        self.allow_private = allow_private
        self.notices = notices
        self.sender = WebhookSender(
            timeout_ms=settings.delivery_timeout, allow_private=allow_private, connections=8
        )

    async def close(self) -> None:
        await self.sender.close()

    async def create_subscription(self, request: SubscriptionCreate) -> SubscriptionCreated:
        check_target_url(request.url, allow_private=self.allow_private)
        self._check_timeout(request.timeoutMs)
        secret = request.secret or generate_secret()
        row = await self.subscriptions.create(
            {
                "id": "sub_" + secrets.token_hex(12),
                "url": request.url,
                "events": list(dict.fromkeys(request.events)),
                "entity_types": request.entityTypes,
                "secret": secret,
                "description": request.description,
                "rate_limit": request.rateLimit,
                "timeout_ms": request.timeoutMs,
                "max_attempts": request.maxAttempts,
            }
        )
        return SubscriptionCreated(**_subscription(row).model_dump(), secret=secret)

    async def list_subscriptions(self) -> list[Subscription]:
        return [_subscription(row) for row in await self.subscriptions.list_all()]

    async def get_subscription(self, subscription_id: str) -> Subscription:
        return _subscription(await self._existing(subscription_id))

    async def update_subscription(
        self, subscription_id: str, patch: SubscriptionPatch
    ) -> Subscription:
        values: dict[str, object] = {}
        changes = patch.model_dump(exclude_unset=True)
        if "url" in changes and patch.url is not None:
            check_target_url(patch.url, allow_private=self.allow_private)
            values["url"] = patch.url
        if "events" in changes and patch.events is not None:
            values["events"] = list(dict.fromkeys(patch.events))
        if "description" in changes:
            values["description"] = patch.description
        if "entityTypes" in changes:
            values["entity_types"] = patch.entityTypes
        if "rateLimit" in changes:
            values["rate_limit"] = patch.rateLimit
        if "timeoutMs" in changes:
            self._check_timeout(patch.timeoutMs)
            values["timeout_ms"] = patch.timeoutMs
        if "maxAttempts" in changes:
            values["max_attempts"] = patch.maxAttempts
        before = await self._existing(subscription_id) if patch.active is not None else None
        if patch.active is True:
            values.update(HEALTHY, active=True, disabled_reason=None)
        elif patch.active is False:
            values.update(active=False, disabled_reason="disabled through the API")
        if not values:
            return await self.get_subscription(subscription_id)
        row = await self.subscriptions.update(subscription_id, values)
        if row is None:
            raise _missing(subscription_id)
        if before is not None and before.active != row.active:
            await self._announce(row, enabled=row.active)
        return _subscription(row)

    def _check_timeout(self, timeout_ms: int | None) -> None:
        # A delivery's lease is sized for WEBHOOK_DELIVERY_TIMEOUT; a longer
        # attempt would be sent again by another worker while it runs.
        if timeout_ms is not None and timeout_ms > self.settings.delivery_timeout:
            raise InvalidSubscriptionLimit(
                f"timeoutMs may be at most WEBHOOK_DELIVERY_TIMEOUT "
                f"({self.settings.delivery_timeout} ms).",
                details={"timeoutMs": timeout_ms, "limit": self.settings.delivery_timeout},
            )

    async def _announce(self, row: SubscriptionRow, *, enabled: bool) -> None:
        if self.notices is None:
            return
        data: dict[str, object] = {"subscriptionId": row.id, "url": row.url}
        if not enabled:
            data["reason"] = row.disabled_reason
        event = "subscription.enabled" if enabled else "subscription.disabled"
        await self.notices.publish(Notice(event, row.id, data))

    async def rotate_secret(
        self, subscription_id: str, request: RotateSecretRequest
    ) -> SecretRotated:
        """A new secret signs from now on; the current one keeps signing too
        for WEBHOOK_SECRET_GRACE, so receivers can switch without a gap."""
        secret = request.secret or generate_secret()
        until = utc_now() + timedelta(milliseconds=self.settings.secret_grace)
        row = await self.subscriptions.rotate_secret(subscription_id, secret, until)
        if row is None:
            raise _missing(subscription_id)
        return SecretRotated(id=row.id, secret=secret, previousSecretExpiresAt=until)

    async def delete_subscription(self, subscription_id: str) -> None:
        if not await self.subscriptions.delete(subscription_id):
            raise _missing(subscription_id)

    async def deliveries(
        self, subscription_id: str, *, before: int | None, limit: int
    ) -> DeliveryPage:
        await self._existing(subscription_id)
        rows = await self.delivery_log.list_for(subscription_id, before=before, limit=limit + 1)
        items = rows[:limit]
        next_cursor = items[-1].id if len(rows) > limit else None
        return DeliveryPage(items=[_delivery(row) for row in items], nextCursor=next_cursor)

    async def retry_delivery(self, delivery_id: int) -> Delivery:
        existing = await self.delivery_log.get(delivery_id)
        if existing is None:
            raise DeliveryNotFound(f"No delivery {delivery_id}.")
        if existing.status != FAILED:
            raise DeliveryNotFailed(
                f"Delivery {delivery_id} is {existing.status}; only failed deliveries are retried.",
                details={"status": existing.status},
            )
        owner = await self._existing(existing.subscription_id)
        attempts = owner.attempt_limit(1 + self.settings.max_retries)
        if not await self.delivery_log.retry(delivery_id, attempts):
            now = await self.delivery_log.get(delivery_id)
            if now is None or now.status != FAILED:
                # Retried (or deleted) by someone else meanwhile.
                return await self.retry_delivery(delivery_id)
            raise RevisionPruned(
                f"The event of delivery {delivery_id} (revision {existing.revision}) is no "
                "longer kept (retention); it cannot be sent again.",
                details={"revision": existing.revision},
            )
        updated = await self.delivery_log.get(delivery_id)
        assert updated is not None
        return _delivery(updated)

    async def replay(
        self, subscription_id: str, request: ReplayRequest | None, *, missing: bool
    ) -> ReplayResult:
        subscription = await self._existing(subscription_id)
        if missing:
            if request is not None:
                raise ReplayNeedsOneSource(
                    "Give either missing=true (no body) or a body with fromRevision or since."
                )
            if not subscription.active:
                raise SubscriptionDisabled(
                    f"Subscription {subscription_id!r} is disabled; re-enable it "
                    '(PATCH {"active": true}) before sending what it missed.',
                    details={"disabledReason": subscription.disabled_reason},
                )
            count, first, last = await self.delivery_log.resend_skipped(
                subscription_id, subscription.attempt_limit(1 + self.settings.max_retries)
            )
            return ReplayResult(scheduled=count, fromRevision=first, toRevision=last)
        if request is None:
            raise ReplayNeedsOneSource(
                "Give a body with fromRevision or since, or missing=true to send what was "
                "skipped while the subscription was disabled."
            )
        await self._check_kept(request)
        scheduled, first, last = await self.delivery_log.replay(
            subscription,
            from_revision=request.fromRevision,
            # UTC first: SQLite compares stored timestamps as text.
            since=None if request.since is None else as_utc(request.since),
            attempt_limit=1 + self.settings.max_retries,
            max_events=MAX_REPLAY_EVENTS,
        )
        return ReplayResult(scheduled=scheduled, fromRevision=first, toRevision=last)

    async def _check_kept(self, request: ReplayRequest) -> None:
        """410 `revision_pruned` when part of what a replay asks for was pruned."""
        store = self.store
        if request.fromRevision is not None:
            await check_kept(store, max(request.fromRevision - 1, 0))
            return
        assert request.since is not None
        bounds = await store.revision_bounds()
        if bounds.oldest is None or bounds.oldest <= 1:
            await check_kept(store, 0)
            return
        [oldest] = await store.changes(bounds.oldest - 1, 1)
        if as_utc(request.since) < oldest.created_at:
            await check_kept(store, 0)

    async def send_test(self, subscription_id: str) -> TestResult:
        """Send a `webhook.test` ping now and report what the receiver said."""
        subscription = await self._existing(subscription_id)
        event = EventRecord(
            revision=0,
            event_id="evt_" + secrets.token_hex(16),
            event="webhook.test",
            entity=None,
            entity_id=None,
            data=orjson.dumps({"subscriptionId": subscription.id}).decode(),
            created_at=utc_now(),
        )
        body = event_body(event)
        headers = signature_headers(
            subscription.secret,
            event_id=event.event_id,
            event=event.event,
            body=body,
            attempt=1,
            timestamp=int(time.time()),
            previous_secret=_previous_secret(subscription),
        )
        outcome = await self.sender.send(
            subscription.url, body, headers, timeout_ms=subscription.timeout_ms
        )
        return TestResult(
            succeeded=outcome.succeeded,
            statusCode=outcome.status_code,
            durationMs=outcome.duration_ms,
            error=outcome.error,
        )

    async def _existing(self, subscription_id: str) -> SubscriptionRow:
        row = await self.subscriptions.get(subscription_id)
        if row is None:
            raise _missing(subscription_id)
        return row


def _missing(subscription_id: str) -> SubscriptionNotFound:
    return SubscriptionNotFound(f"No webhook subscription {subscription_id!r}.")


def _previous_secret(row: SubscriptionRow) -> str | None:
    until = row.previous_secret_until
    return row.previous_secret if until is not None and until > utc_now() else None


def _subscription(row: SubscriptionRow) -> Subscription:
    until = row.previous_secret_until
    return Subscription(
        id=row.id,
        url=row.url,
        events=row.events,
        entityTypes=row.entity_types,
        description=row.description,
        status="active" if row.active else "disabled",
        consecutiveFailures=row.consecutive_failures,
        disabledReason=row.disabled_reason,
        lastDeliveryAt=row.last_delivery_at,
        lastError=row.last_error,
        createdAt=row.created_at,
        updatedAt=row.updated_at,
        failingSince=row.failing_since,
        circuitOpenUntil=row.circuit_open_until,
        previousSecretExpiresAt=until if until is not None and until > utc_now() else None,
        rateLimit=row.rate_limit,
        timeoutMs=row.timeout_ms,
        maxAttempts=row.max_attempts,
    )


def _delivery(row: DeliveryRow) -> Delivery:
    status = row.status
    assert status in ("pending", "succeeded", "failed", "skipped")
    return Delivery(
        id=row.id,
        subscriptionId=row.subscription_id,
        revision=row.revision,
        eventId=row.event_id,
        event=row.event,
        status=status,
        attempts=row.attempts,
        nextAttemptAt=row.next_attempt_at if status == "pending" else None,
        lastStatusCode=row.last_status_code,
        lastError=row.last_error,
        createdAt=row.created_at,
        updatedAt=row.updated_at,
        attemptLog=[
            Attempt(
                attempt=a.attempt,
                startedAt=a.started_at,
                durationMs=a.duration_ms,
                statusCode=a.status_code,
                error=a.error,
                succeeded=a.succeeded,
            )
            for a in row.attempt_log
        ],
    )
