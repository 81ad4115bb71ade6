"""Webhooks API routes (docs/data-model.md, "Webhooks")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status

from potok_state.events.service import RevisionPruned
from potok_state.kit.auth import Administrator
from potok_state.kit.errors import error_responses
from potok_state.kit.headers import Idempotency, answer
from potok_state.kit.json_body import JsonBodyRoute
from potok_state.kit.parameters import PageLimit
from potok_state.webhooks.answers import AnswerUnavailable
from potok_state.webhooks.schemas import (
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
from potok_state.webhooks.service import (
    DeliveryNotFailed,
    DeliveryNotFound,
    InvalidSubscriptionLimit,
    ReplayNeedsOneSource,
    ReplayTooLarge,
    SubscriptionDisabled,
    SubscriptionNotFound,
    WebhookService,
)
from potok_state.webhooks.targets import InvalidWebhookUrl

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], route_class=JsonBodyRoute)

SubscriptionId = Annotated[str, Path(pattern=r"^sub_[0-9a-f]{24}$", description="Subscription id.")]


async def webhook_service(request: Request) -> WebhookService:
    service: WebhookService = request.app.state.webhook_service
    return service


Service = Annotated[WebhookService, Depends(webhook_service)]


@router.post(
    "/subscriptions",
    response_model=SubscriptionCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe a URL to events; the secret is shown only here",
    response_description="The subscription, with its secret (shown only here)",
    responses=error_responses(InvalidWebhookUrl, InvalidSubscriptionLimit, AnswerUnavailable),
)
async def create_subscription(
    body: SubscriptionCreate,
    response: Response,
    service: Service,
    actor: Administrator,
    idempotency: Idempotency,
) -> SubscriptionCreated:
    """Subscribe a URL to event patterns, optionally for some entity types only. The signing secret
    is generated when not given and shown only in this answer (and in its replay to a retry with
    the same `Idempotency-Key`). 422 `invalid_webhook_url` for non-http(s), credentials in the URL,
    or private targets when they are refused."""
    created = await service.create_subscription(body, actor=actor, idempotency=idempotency)
    return answer(created, response)


@router.get(
    "/subscriptions",
    response_model=list[Subscription],
    summary="All subscriptions (secrets are never shown again)",
    response_description="Every subscription, oldest first",
    responses=error_responses(),
)
async def list_subscriptions(service: Service, _: Administrator) -> list[Subscription]:
    """Every subscription, without secrets."""
    return await service.list_subscriptions()


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=Subscription,
    summary="One subscription with its delivery status",
    response_description="The subscription",
    responses=error_responses(SubscriptionNotFound),
)
async def get_subscription(
    subscription_id: SubscriptionId, service: Service, _: Administrator
) -> Subscription:
    """One subscription with its delivery state (failures in a row, last error). 404
    `subscription_not_found`."""
    return await service.get_subscription(subscription_id)


@router.patch(
    "/subscriptions/{subscription_id}",
    response_model=Subscription,
    summary="Change url, events, description or entity types; re-enable with active: true",
    response_description="The subscription after the change",
    responses=error_responses(SubscriptionNotFound, InvalidWebhookUrl, InvalidSubscriptionLimit),
)
async def update_subscription(
    subscription_id: SubscriptionId,
    body: SubscriptionPatch,
    response: Response,
    service: Service,
    actor: Administrator,
    idempotency: Idempotency,
) -> Subscription:
    """Change the URL, events, entity types, description, or set `active` (re-enabling resets the
    failure count). 404 `subscription_not_found`, 422 `invalid_webhook_url`."""
    updated = await service.update_subscription(
        subscription_id, body, actor=actor, idempotency=idempotency
    )
    return answer(updated, response)


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a subscription and its delivery log",
    response_description="Deleted, with its delivery log",
    responses=error_responses(SubscriptionNotFound),
)
async def delete_subscription(
    subscription_id: SubscriptionId,
    service: Service,
    actor: Administrator,
    idempotency: Idempotency,
) -> Response:
    """Delete the subscription and its pending deliveries (204). 404 `subscription_not_found`."""
    deleted = await service.delete_subscription(
        subscription_id, actor=actor, idempotency=idempotency
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    answer(deleted, response)
    return response


@router.get(
    "/subscriptions/{subscription_id}/deliveries",
    response_model=DeliveryPage,
    summary="The delivery log, newest first, with every attempt",
    response_description="A page of deliveries, newest first",
    responses=error_responses(SubscriptionNotFound),
)
async def list_deliveries(
    subscription_id: SubscriptionId,
    service: Service,
    _: Administrator,
    limit: PageLimit = 50,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="Older than this id.")] = None,
) -> DeliveryPage:
    """The delivery log of a subscription, newest first: status, attempts, last status code and
    error; page with `before` (the `nextCursor` of the previous page)."""
    return await service.deliveries(subscription_id, before=before, limit=limit)


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=Delivery,
    summary="Send a failed delivery again",
    response_description="The delivery, pending again",
    responses=error_responses(DeliveryNotFound, DeliveryNotFailed, RevisionPruned),
)
async def retry_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=2**62)],
    response: Response,
    service: Service,
    actor: Administrator,
    idempotency: Idempotency,
) -> Delivery:
    """Send a failed delivery again now, with a fresh attempt budget. 404 `delivery_not_found`, 409
    when it is not failed, 410 `revision_pruned` when its event is no longer kept."""
    retried = await service.retry_delivery(delivery_id, actor=actor, idempotency=idempotency)
    return answer(retried, response)


@router.post(
    "/subscriptions/{subscription_id}/replay",
    response_model=ReplayResult,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send again what the subscription matched from a revision or a time, or what it missed",
    response_description="Queued: what is sent again",
    responses=error_responses(
        SubscriptionNotFound,
        SubscriptionDisabled,
        ReplayNeedsOneSource,
        ReplayTooLarge,
        RevisionPruned,
    ),
)
async def replay(
    subscription_id: SubscriptionId,
    response: Response,
    service: Service,
    actor: Administrator,
    idempotency: Idempotency,
    body: Annotated[ReplayRequest | None, Body()] = None,
    missing: Annotated[
        bool,
        Query(
            description="Send exactly the deliveries skipped while the subscription was disabled "
            "(no body)."
        ),
    ] = False,
) -> ReplayResult:
    """Send again every event the subscription matches since a revision (`fromRevision`) or a time
    (`since`), up to `toRevision` or the newest event, in per-entity order; 422 `replay_too_large`
    (nothing queued) when that would be more than WEBHOOK_REPLAY_MAX deliveries. With
    `missing=true` and no body: send exactly the deliveries recorded as `skipped` while it was
    disabled, in per-entity order (409 `subscription_disabled` while it still is). 410
    `revision_pruned` when the range asked for starts before the oldest event kept (retention)."""
    replayed = await service.replay(
        subscription_id, body, missing=missing, actor=actor, idempotency=idempotency
    )
    return answer(replayed, response)


@router.post(
    "/subscriptions/{subscription_id}/rotate-secret",
    response_model=SecretRotated,
    summary="Replace the signing secret; the old one keeps signing for a grace period",
    response_description="The new secret (shown only here) and until when the old one signs too",
    responses=error_responses(SubscriptionNotFound, AnswerUnavailable),
)
async def rotate_secret(
    subscription_id: SubscriptionId,
    response: Response,
    service: Service,
    actor: Administrator,
    idempotency: Idempotency,
    body: Annotated[RotateSecretRequest | None, Body()] = None,
) -> SecretRotated:
    """Give the subscription a new secret (`secret`, or a generated `whsec_…` one), shown only in
    this answer. For WEBHOOK_SECRET_GRACE (24 h) deliveries carry both signatures in
    `webhook-signature` (`v1,<new> v1,<old>`); `X-Webhook-Signature` uses the new secret. A retry
    with the same `Idempotency-Key` rotates nothing and answers the same secret."""
    rotated = await service.rotate_secret(
        subscription_id, body or RotateSecretRequest(), actor=actor, idempotency=idempotency
    )
    return answer(rotated, response)


@router.post(
    "/subscriptions/{subscription_id}/test",
    response_model=TestResult,
    summary="Send a webhook.test ping now and report the receiver's answer",
    response_description="What the receiver answered (a failed ping is not an error of this call)",
    responses=error_responses(SubscriptionNotFound),
)
async def send_test(
    subscription_id: SubscriptionId,
    response: Response,
    service: Service,
    actor: Administrator,
    idempotency: Idempotency,
) -> TestResult:
    """Send a signed `ping` event to the subscription's URL now; answers what the receiver said. A
    retry with the same `Idempotency-Key` is answered the first result without a second ping."""
    tested = await service.send_test(subscription_id, actor=actor, idempotency=idempotency)
    return answer(tested, response)
