"""Subscriptions and the delivery log: validation, secrets and their rotation,
re-enabling, retry, replay, ping (docs/webhooks.md).

Every write honours `Idempotency-Key` (idempotency.py): checks that depend on
what is stored run after the key's stored answer is looked up, so a retry is
replayed rather than judged again, and the answer is stored in the
transaction of the write."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import orjson

from potok_state.changes.model import (
    EventRecord,
)
from potok_state.changes.payload import event_body
from potok_state.clock import as_utc, utc_now
from potok_state.events.service import RevisionPruned, check_kept
from potok_state.idempotency import (
    Applied,
    IdempotencyKey,
    OutcomeCodec,
    idempotent,
)
from potok_state.kit.errors import Conflict, InvalidInput, NotFound
from potok_state.settings import WebhookSettings
from potok_state.storage.idempotency import IdempotencyWrite
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.answers import (
    DELIVERY_CODEC,
    NO_BODY,
    REPLAY_CODEC,
    SUBSCRIPTION_CODEC,
    TEST_CODEC,
    SecretSealingCodec,
)
from potok_state.webhooks.delivery import WebhookSender
from potok_state.webhooks.notices import Notice, SubscriptionNotices
from potok_state.webhooks.repository.delivery_log import DeliveryLog, ReplayRange
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

OutcomeT = TypeVar("OutcomeT")
ResultT = TypeVar("ResultT")


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


class ReplayTooLarge(InvalidInput):
    code = "replay_too_large"


class WebhookService:
    def __init__(
        self,
        store: SqlStateStore,
        seal: SecretSeal,
        settings: WebhookSettings,
        *,
        allow_private: bool,
        idempotency_ttl: int,
        notices: SubscriptionNotices | None = None,
    ) -> None:
        self.store = store
        self.subscriptions = SubscriptionRepository(store, seal)
        self.delivery_log = DeliveryLog(store)
        self.settings = settings
        self.allow_private = allow_private
        self.idempotency_ttl = idempotency_ttl
        self.notices = notices
        self.sender = WebhookSender(
            timeout_ms=settings.delivery_timeout, allow_private=allow_private, connections=8
        )
        self._created_codec = SecretSealingCodec(SubscriptionCreated, seal)
        self._rotated_codec = SecretSealingCodec(SecretRotated, seal)

    async def close(self) -> None:
        await self.sender.close()

    async def _once(
        self,
        actor: str,
        key: IdempotencyKey | None,
        codec: OutcomeCodec[OutcomeT],
        perform: Callable[[IdempotencyWrite[ResultT] | None], Awaitable[ResultT]],
        respond: Callable[[ResultT], OutcomeT],
    ) -> Applied[OutcomeT]:
        return await idempotent(
            self.store,
            key,
            actor=actor,
            ttl_seconds=self.idempotency_ttl,
            codec=codec,
            perform=perform,
            respond=respond,
        )

    async def create_subscription(
        self,
        request: SubscriptionCreate,
        *,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[SubscriptionCreated]:
        check_target_url(request.url, allow_private=self.allow_private)
        self._check_timeout(request.timeoutMs)
        secret = request.secret or generate_secret()
        values: dict[str, object] = {
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

        def respond(row: SubscriptionRow) -> SubscriptionCreated:
            return SubscriptionCreated(**_subscription(row).model_dump(), secret=secret)

        return await self._once(
            actor,
            idempotency,
            self._created_codec,
            lambda answer: self.subscriptions.create(values, answer),
            respond,
        )

    async def list_subscriptions(self) -> list[Subscription]:
        return [_subscription(row) for row in await self.subscriptions.list_all()]

    async def get_subscription(self, subscription_id: str) -> Subscription:
        return _subscription(await self._existing(subscription_id))

    async def update_subscription(
        self,
        subscription_id: str,
        patch: SubscriptionPatch,
        *,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[Subscription]:
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
        if patch.active is True:
            values.update(HEALTHY, active=True, disabled_reason=None)
        elif patch.active is False:
            values.update(active=False, disabled_reason="disabled through the API")
        before: SubscriptionRow | None = None

        async def perform(
            answer: IdempotencyWrite[SubscriptionRow | None] | None,
        ) -> SubscriptionRow | None:
            nonlocal before
            if patch.active is not None:
                before = await self._existing(subscription_id)
            return await self.subscriptions.update(subscription_id, values, answer)

        applied = await self._once(
            actor,
            idempotency,
            SUBSCRIPTION_CODEC,
            perform,
            lambda row: _subscription(_found(row, subscription_id)),
        )
        now_active = applied.outcome.status == "active"
        if before is not None and before.active != now_active:
            await self._announce(applied.outcome, enabled=now_active)
        return applied

    def _check_timeout(self, timeout_ms: int | None) -> None:
        # A delivery's lease is sized for WEBHOOK_DELIVERY_TIMEOUT; a longer
        # attempt would be sent again by another worker while it runs.
        if timeout_ms is not None and timeout_ms > self.settings.delivery_timeout:
            raise InvalidSubscriptionLimit(
                f"timeoutMs may be at most WEBHOOK_DELIVERY_TIMEOUT "
                f"({self.settings.delivery_timeout} ms).",
                details={"timeoutMs": timeout_ms, "limit": self.settings.delivery_timeout},
            )

    async def _announce(self, subscription: Subscription, *, enabled: bool) -> None:
        if self.notices is None:
            return
        data: dict[str, object] = {"subscriptionId": subscription.id, "url": subscription.url}
        if not enabled:
            data["reason"] = subscription.disabledReason
        event = "subscription.enabled" if enabled else "subscription.disabled"
        await self.notices.publish(Notice(event, subscription.id, data))

    async def rotate_secret(
        self,
        subscription_id: str,
        request: RotateSecretRequest,
        *,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[SecretRotated]:
        """A new secret signs from now on; the current one keeps signing too
        for WEBHOOK_SECRET_GRACE, so receivers can switch without a gap. A
        retry with the same Idempotency-Key rotates nothing: the previous
        secret stays the one that was current before the first request."""
        secret = request.secret or generate_secret()
        until = utc_now() + timedelta(milliseconds=self.settings.secret_grace)

        def respond(row: SubscriptionRow | None) -> SecretRotated:
            rotated = _found(row, subscription_id)
            return SecretRotated(id=rotated.id, secret=secret, previousSecretExpiresAt=until)

        return await self._once(
            actor,
            idempotency,
            self._rotated_codec,
            lambda answer: self.subscriptions.rotate_secret(subscription_id, secret, until, answer),
            respond,
        )

    async def delete_subscription(
        self, subscription_id: str, *, actor: str, idempotency: IdempotencyKey | None = None
    ) -> Applied[None]:
        def respond(deleted: bool) -> None:
            if not deleted:
                raise _missing(subscription_id)

        return await self._once(
            actor,
            idempotency,
            NO_BODY,
            lambda answer: self.subscriptions.delete(subscription_id, answer),
            respond,
        )

    async def deliveries(
        self, subscription_id: str, *, before: int | None, limit: int
    ) -> DeliveryPage:
        await self._existing(subscription_id)
        rows = await self.delivery_log.list_for(subscription_id, before=before, limit=limit + 1)
        items = rows[:limit]
        next_cursor = items[-1].id if len(rows) > limit else None
        return DeliveryPage(items=[_delivery(row) for row in items], nextCursor=next_cursor)

    async def retry_delivery(
        self, delivery_id: int, *, actor: str, idempotency: IdempotencyKey | None = None
    ) -> Applied[Delivery]:
        async def perform(
            answer: IdempotencyWrite[tuple[bool, DeliveryRow | None]] | None,
        ) -> tuple[bool, DeliveryRow | None]:
            existing = _retriable(await self.delivery_log.get(delivery_id), delivery_id)
            owner = await self._existing(existing.subscription_id)
            attempts = owner.attempt_limit(1 + self.settings.max_retries)
            return await self.delivery_log.retry(delivery_id, attempts, answer)

        def respond(retried: tuple[bool, DeliveryRow | None]) -> Delivery:
            done, row = retried
            if done and row is not None:
                return _delivery(row)
            # Deleted, or retried by another request meanwhile (404, 409); or
            # still failed, because its event is no longer kept.
            pruned = _retriable(row, delivery_id)
            raise RevisionPruned(
                f"The event of delivery {delivery_id} (revision {pruned.revision}) is no "
                "longer kept (retention); it cannot be sent again.",
                details={"revision": pruned.revision},
            )

        return await self._once(actor, idempotency, DELIVERY_CODEC, perform, respond)

    async def replay(
        self,
        subscription_id: str,
        request: ReplayRequest | None,
        *,
        missing: bool,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[ReplayResult]:
        if missing and request is not None:
            raise ReplayNeedsOneSource(
                "Give either missing=true (no body) or a body with fromRevision or since."
            )
        if not missing and request is None:
            raise ReplayNeedsOneSource(
                "Give a body with fromRevision or since, or missing=true to send what was "
                "skipped while the subscription was disabled."
            )
        if request is None:
            return await self._once(
                actor,
                idempotency,
                REPLAY_CODEC,
                lambda answer: self._resend_skipped(subscription_id, answer),
                lambda resent: ReplayResult(
                    scheduled=resent[0], fromRevision=resent[1], toRevision=resent[2]
                ),
            )
        covered: ReplayRange | None = None

        async def perform(answer: IdempotencyWrite[int] | None) -> int:
            nonlocal covered
            subscription = await self._existing(subscription_id)
            await self._check_kept(request)
            limit = self.settings.replay_max
            found = await self.delivery_log.replay_range(
                subscription,
                from_revision=request.fromRevision or 0,
                to_revision=request.toRevision,
                # UTC first: SQLite compares stored timestamps as text.
                since=None if request.since is None else as_utc(request.since),
                limit=limit,
            )
            if len(found.revisions) > limit:
                raise _too_large(found, limit)
            covered = found
            return await self.delivery_log.queue_replay(
                subscription,
                found.revisions,
                attempt_limit=1 + self.settings.max_retries,
                answer=answer,
            )

        def respond(queued: int) -> ReplayResult:
            assert covered is not None
            return ReplayResult(
                scheduled=queued, fromRevision=covered.first, toRevision=covered.last
            )

        return await self._once(actor, idempotency, REPLAY_CODEC, perform, respond)

    async def _resend_skipped(
        self,
        subscription_id: str,
        answer: IdempotencyWrite[tuple[int, int | None, int | None]] | None,
    ) -> tuple[int, int | None, int | None]:
        subscription = await self._existing(subscription_id)
        if not subscription.active:
            raise SubscriptionDisabled(
                f"Subscription {subscription_id!r} is disabled; re-enable it "
                '(PATCH {"active": true}) before sending what it missed.',
                details={"disabledReason": subscription.disabled_reason},
            )
        return await self.delivery_log.resend_skipped(
            subscription_id, subscription.attempt_limit(1 + self.settings.max_retries), answer
        )

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

    async def send_test(
        self, subscription_id: str, *, actor: str, idempotency: IdempotencyKey | None = None
    ) -> Applied[TestResult]:
        """Send a `webhook.test` ping now and report what the receiver said."""

        async def perform(answer: IdempotencyWrite[TestResult] | None) -> TestResult:
            result = await self._ping(await self._existing(subscription_id))
            if answer is not None:
                await self.store.remember(answer, result)
            return result

        return await self._once(actor, idempotency, TEST_CODEC, perform, lambda result: result)

    async def _ping(self, subscription: SubscriptionRow) -> TestResult:
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


def _too_large(found: ReplayRange, limit: int) -> ReplayTooLarge:
    count = len(found.revisions)
    last_within = found.revisions[limit - 1]
    return ReplayTooLarge(
        f"This replay would queue {'' if found.complete else 'at least '}{count} deliveries, "
        f"more than WEBHOOK_REPLAY_MAX ({limit}); nothing was queued. The first {limit} end "
        f"at revision {last_within}: replay up to toRevision {last_within}, then on from "
        f"{last_within + 1}.",
        details={
            "count": count,
            "countIsAtLeast": not found.complete,
            "limit": limit,
            "lastRevisionWithinLimit": last_within,
        },
    )


def _found(row: SubscriptionRow | None, subscription_id: str) -> SubscriptionRow:
    if row is None:
        raise _missing(subscription_id)
    return row


def _retriable(row: DeliveryRow | None, delivery_id: int) -> DeliveryRow:
    """A delivery that exists and is failed (only those are retried)."""
    if row is None:
        raise DeliveryNotFound(f"No delivery {delivery_id}.")
    if row.status != FAILED:
        raise DeliveryNotFailed(
            f"Delivery {delivery_id} is {row.status}; only failed deliveries are retried.",
            details={"status": row.status},
        )
    return row


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
