"""Subscriptions and the delivery log: validation, secrets, retry, replay, ping."""

from __future__ import annotations

import secrets
import time

import orjson

from potok_state.changes.model import (
    EventRecord,
)
from potok_state.changes.payload import event_body
from potok_state.clock import as_utc, utc_now
from potok_state.kit.errors import Conflict, NotFound
from potok_state.settings import WebhookSettings
from potok_state.webhooks.delivery import WebhookSender
from potok_state.webhooks.repository import (
    FAILED,
    DeliveryRow,
    SubscriptionRow,
    WebhookRepository,
)
from potok_state.webhooks.schemas import (
    Attempt,
    Delivery,
    DeliveryPage,
    ReplayRequest,
    ReplayResult,
    Subscription,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPatch,
    TestResult,
)
from potok_state.webhooks.signing import generate_secret, signature_headers
from potok_state.webhooks.targets import check_target_url

MAX_REPLAY_EVENTS = 10_000


class SubscriptionNotFound(NotFound):
    code = "subscription_not_found"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"


class DeliveryNotFailed(Conflict):
    code = "delivery_not_failed"


class WebhookService:
    def __init__(
        self,
        repository: WebhookRepository,
        settings: WebhookSettings,
        *,
        allow_private: bool,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.allow_private = allow_private
        self.sender = WebhookSender(
            timeout_ms=settings.delivery_timeout, allow_private=allow_private, connections=8
        )

    async def close(self) -> None:
        await self.sender.close()

    async def create_subscription(self, request: SubscriptionCreate) -> SubscriptionCreated:
        check_target_url(request.url, allow_private=self.allow_private)
        secret = request.secret or generate_secret()
        row = await self.repository.create_subscription(
            {
                "id": "sub_" + secrets.token_hex(12),
                "url": request.url,
                "events": list(dict.fromkeys(request.events)),
                "entity_types": request.entityTypes,
                "secret": secret,
                "description": request.description,
            }
        )
        return SubscriptionCreated(**_subscription(row).model_dump(), secret=secret)

    async def list_subscriptions(self) -> list[Subscription]:
        return [_subscription(row) for row in await self.repository.list_subscriptions()]

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
        if patch.active is True:
            values.update(active=True, consecutive_failures=0, disabled_reason=None)
        elif patch.active is False:
            values.update(active=False, disabled_reason="disabled through the API")
        if not values:
            return await self.get_subscription(subscription_id)
        row = await self.repository.update_subscription(subscription_id, values)
        if row is None:
            raise _missing(subscription_id)
        return _subscription(row)

    async def delete_subscription(self, subscription_id: str) -> None:
        if not await self.repository.delete_subscription(subscription_id):
            raise _missing(subscription_id)

    async def deliveries(
        self, subscription_id: str, *, before: int | None, limit: int
    ) -> DeliveryPage:
        await self._existing(subscription_id)
        rows = await self.repository.list_deliveries(
            subscription_id, before=before, limit=limit + 1
        )
        items = rows[:limit]
        next_cursor = items[-1].id if len(rows) > limit else None
        return DeliveryPage(items=[_delivery(row) for row in items], nextCursor=next_cursor)

    async def retry_delivery(self, delivery_id: int) -> Delivery:
        existing = await self.repository.get_delivery(delivery_id)
        if existing is None:
            raise DeliveryNotFound(f"No delivery {delivery_id}.")
        if existing.status != FAILED:
            raise DeliveryNotFailed(
                f"Delivery {delivery_id} is {existing.status}; only failed deliveries are retried.",
                details={"status": existing.status},
            )
        await self.repository.retry_delivery(delivery_id, 1 + self.settings.max_retries)
        updated = await self.repository.get_delivery(delivery_id)
        assert updated is not None
        return _delivery(updated)

    async def replay(self, subscription_id: str, request: ReplayRequest) -> ReplayResult:
        subscription = await self._existing(subscription_id)
        scheduled, first, last = await self.repository.replay(
            subscription,
            from_revision=request.fromRevision,
            # UTC first: SQLite compares stored timestamps as text.
            since=None if request.since is None else as_utc(request.since),
            attempt_limit=1 + self.settings.max_retries,
            max_events=MAX_REPLAY_EVENTS,
        )
        return ReplayResult(scheduled=scheduled, fromRevision=first, toRevision=last)

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
        )
        outcome = await self.sender.send(subscription.url, body, headers)
        return TestResult(
            succeeded=outcome.succeeded,
            statusCode=outcome.status_code,
            durationMs=outcome.duration_ms,
            error=outcome.error,
        )

    async def _existing(self, subscription_id: str) -> SubscriptionRow:
        row = await self.repository.get_subscription(subscription_id)
        if row is None:
            raise _missing(subscription_id)
        return row


def _missing(subscription_id: str) -> SubscriptionNotFound:
    return SubscriptionNotFound(f"No webhook subscription {subscription_id!r}.")


def _subscription(row: SubscriptionRow) -> Subscription:
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
    )


def _delivery(row: DeliveryRow) -> Delivery:
    status = row.status
    assert status in ("pending", "succeeded", "failed")
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
