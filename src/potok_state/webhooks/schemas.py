"""Wire models of the webhooks API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.config import JsonDict

from potok_state.changes.selection import EVENT_FILTER_PATTERN
from potok_state.clock import BodyTime, Timestamp
from potok_state.kit.request_model import RequestModel
from potok_state.states.schemas import EntityType

EventFilter = Annotated[str, StringConstraints(pattern=EVENT_FILTER_PATTERN)]
WebhookUrl = Annotated[str, StringConstraints(min_length=8, max_length=2048)]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=256)]
Description = Annotated[str, StringConstraints(max_length=500)]
# Per-subscription overrides (docs/webhooks.md, "Per-subscription limits").
RateLimit = Annotated[int, Field(ge=1, le=10_000, description="Deliveries per second at most.")]
TimeoutMs = Annotated[
    int,
    Field(
        ge=100,
        le=3_600_000,
        description="Per-attempt timeout, ms; at most WEBHOOK_DELIVERY_TIMEOUT.",
    ),
]
MaxAttempts = Annotated[int, Field(ge=1, le=21, description="Attempts per delivery (1 + retries).")]


class SubscriptionCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/potok",
                    "events": ["entity.*"],
                    "entityTypes": ["task"],
                    "description": "Task status updates",
                }
            ]
        }
    )

    url: WebhookUrl = Field(
        description="Where deliveries are POSTed: http(s); private, loopback and link-local "
        "addresses only with WEBHOOK_ALLOW_PRIVATE_TARGETS."
    )
    events: list[EventFilter] = Field(
        min_length=1,
        max_length=50,
        description="Event patterns: *, entity.*, entity.created, entity.updated, "
        "entity.deleted, custom.*, custom.<name>, subscription.*.",
    )
    secret: Secret | None = Field(
        None, description="Signing secret; generated (whsec_…) when omitted and shown once."
    )
    description: Description | None = Field(
        None, description="What it is for (up to 500 characters)."
    )
    entityTypes: list[EntityType] | None = Field(
        None, max_length=100, description="Only entity events of these types."
    )
    rateLimit: RateLimit | None = Field(
        None, description="Deliveries per second at most; omitted: no limit."
    )
    timeoutMs: TimeoutMs | None = Field(
        None,
        description="Per-attempt timeout, ms, at most WEBHOOK_DELIVERY_TIMEOUT; omitted: that "
        "setting.",
    )
    maxAttempts: MaxAttempts | None = Field(
        None, description="Attempts per delivery (1 + retries); omitted: 1 + WEBHOOK_MAX_RETRIES."
    )


class SubscriptionPatch(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "events": ["entity.updated", "entity.deleted"],
                    "description": "Task updates and deletions",
                }
            ]
        }
    )

    url: WebhookUrl | None = Field(
        None,
        description="Where deliveries are POSTed: http(s); private, loopback and link-local "
        "addresses only with WEBHOOK_ALLOW_PRIVATE_TARGETS.",
    )
    events: list[EventFilter] | None = Field(
        None,
        min_length=1,
        max_length=50,
        description="Event patterns: *, entity.*, entity.created, entity.updated, "
        "entity.deleted, custom.*, custom.<name>, subscription.*.",
    )
    description: Description | None = Field(
        None, description="What it is for (up to 500 characters)."
    )
    entityTypes: list[EntityType] | None = Field(
        None, max_length=100, description="Only entity events of these types; null: every type."
    )
    rateLimit: RateLimit | None = Field(None, description="null: no limit.")
    timeoutMs: TimeoutMs | None = Field(None, description="null: WEBHOOK_DELIVERY_TIMEOUT.")
    maxAttempts: MaxAttempts | None = Field(None, description="null: 1 + WEBHOOK_MAX_RETRIES.")
    active: bool | None = Field(
        None, description="true re-enables a disabled subscription and resets its failures."
    )


SUBSCRIPTION_EXAMPLE: JsonDict = {
    "id": "sub_b70ba7a9e69214d03c5618e6",
    "url": "https://hooks.example.com/potok",
    "events": ["entity.*"],
    "entityTypes": ["task"],
    "description": "Task status updates",
    "status": "active",
    "consecutiveFailures": 0,
    "disabledReason": None,
    "lastDeliveryAt": "2026-11-27T10:05:00.000Z",
    "lastError": None,
    "createdAt": "2026-11-27T09:00:00.000Z",
    "updatedAt": "2026-11-27T09:00:00.000Z",
}


class Subscription(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [SUBSCRIPTION_EXAMPLE]})

    id: str = Field(description="The subscription id (sub_…).")
    url: str = Field(description="Where deliveries are POSTed.")
    events: list[str] = Field(description="The event patterns it receives.")
    entityTypes: list[str] | None = Field(
        description="Only entity events of these types; null: every type."
    )
    description: str | None = Field(description="What it is for.")
    status: Literal["active", "disabled"] = Field(
        description="active, or disabled (by the disable policy, a 410 answer, or PATCH "
        "active=false)."
    )
    consecutiveFailures: int = Field(
        description="Deliveries in a row that failed after every retry (docs/webhooks.md)."
    )
    disabledReason: str | None = Field(description="Why it was disabled; null while active.")
    lastDeliveryAt: Timestamp | None = Field(description="When an attempt last finished.")
    lastError: str | None = Field(
        description="The last failed attempt's error; null after a success."
    )
    createdAt: Timestamp = Field(description="When it was created.")
    updatedAt: Timestamp = Field(description="When it last changed.")
    failingSince: Timestamp | None = Field(
        None, description="First failed attempt since the last success."
    )
    circuitOpenUntil: Timestamp | None = Field(
        None,
        description="While set, the receiver keeps failing: deliveries wait and one probe is "
        "sent at this time.",
    )
    previousSecretExpiresAt: Timestamp | None = Field(
        None, description="After a rotation: until then the old secret signs too."
    )
    rateLimit: int | None = Field(None, description="Deliveries per second at most; null: none.")
    timeoutMs: int | None = Field(
        None, description="Per-attempt timeout, ms; null: WEBHOOK_DELIVERY_TIMEOUT."
    )
    maxAttempts: int | None = Field(
        None, description="Attempts per delivery; null: 1 + WEBHOOK_MAX_RETRIES."
    )


class SubscriptionCreated(Subscription):
    # Its own example: the config (and so the example) of Subscription is inherited.
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **SUBSCRIPTION_EXAMPLE,
                    "lastDeliveryAt": None,
                    "secret": "whsec_ITr1yez3rIsV2YstYL4kOvhQIUIk4tF0gw2EosHzjiY=",
                }
            ]
        }
    )

    secret: str = Field(description="Shown only in this response.")


class Attempt(BaseModel):
    attempt: int = Field(description="1 for the first attempt, then one more per retry.")
    startedAt: Timestamp = Field(description="When the request was sent.")
    durationMs: int = Field(description="How long the receiver took to answer, ms.")
    statusCode: int | None = Field(
        description="The receiver's HTTP status; null when it did not answer."
    )
    error: str | None = Field(description="What went wrong; null on success.")
    succeeded: bool = Field(description="Whether the receiver answered 2xx.")


class Delivery(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1042,
                    "subscriptionId": "sub_b70ba7a9e69214d03c5618e6",
                    "revision": 2,
                    "eventId": "evt_5af4d9902fc15f762e70470a54d2e861",
                    "event": "entity.updated",
                    "status": "pending",
                    "attempts": 4,
                    "nextAttemptAt": "2026-11-27T11:00:00.000Z",
                    "lastStatusCode": 503,
                    "lastError": "HTTP 503: Service Unavailable",
                    "createdAt": "2026-11-27T10:05:00.000Z",
                    "updatedAt": "2026-11-27T11:00:00.000Z",
                    "attemptLog": [
                        {
                            "attempt": 1,
                            "startedAt": "2026-11-27T10:05:00.120Z",
                            "durationMs": 41,
                            "statusCode": 503,
                            "error": "HTTP 503: Service Unavailable",
                            "succeeded": False,
                        },
                        {
                            "attempt": 2,
                            "startedAt": "2026-11-27T10:05:05.140Z",
                            "durationMs": 38,
                            "statusCode": 503,
                            "error": "HTTP 503: Service Unavailable",
                            "succeeded": False,
                        },
                        {
                            "attempt": 3,
                            "startedAt": "2026-11-27T10:05:15.160Z",
                            "durationMs": 30000,
                            "statusCode": None,
                            "error": "timed out after 30 s",
                            "succeeded": False,
                        },
                        {
                            "attempt": 4,
                            "startedAt": "2026-11-27T10:06:05.190Z",
                            "durationMs": 44,
                            "statusCode": 503,
                            "error": "HTTP 503: Service Unavailable",
                            "succeeded": False,
                        },
                    ],
                }
            ]
        }
    )

    id: int = Field(description="The delivery id (for /webhooks/deliveries/{id}/retry).")
    subscriptionId: str = Field(description="The subscription it is for.")
    revision: int = Field(description="The revision of its event.")
    eventId: str = Field(
        description="The event id, sent as webhook-id and X-Webhook-Id (the same on every attempt)."
    )
    event: str = Field(description="The event type.")
    status: Literal["pending", "succeeded", "failed", "skipped"] = Field(
        description="skipped: not sent because the subscription was disabled; "
        "`replay?missing=true` sends it."
    )
    attempts: int = Field(description="Attempts made so far.")
    nextAttemptAt: Timestamp | None = Field(description="When the next attempt is due (pending).")
    lastStatusCode: int | None = Field(description="The last attempt's HTTP status.")
    lastError: str | None = Field(description="The last attempt's error.")
    createdAt: Timestamp = Field(description="When it was queued.")
    updatedAt: Timestamp = Field(description="When it last changed.")
    attemptLog: list[Attempt] = Field(description="Every attempt, oldest first.")


class DeliveryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": 1041,
                            "subscriptionId": "sub_b70ba7a9e69214d03c5618e6",
                            "revision": 1,
                            "eventId": "evt_d0032e3c2325fd22b95bec77081b1084",
                            "event": "entity.created",
                            "status": "succeeded",
                            "attempts": 1,
                            "nextAttemptAt": None,
                            "lastStatusCode": 200,
                            "lastError": None,
                            "createdAt": "2026-11-27T10:00:00.000Z",
                            "updatedAt": "2026-11-27T10:00:00.090Z",
                            "attemptLog": [
                                {
                                    "attempt": 1,
                                    "startedAt": "2026-11-27T10:00:00.020Z",
                                    "durationMs": 70,
                                    "statusCode": 200,
                                    "error": None,
                                    "succeeded": True,
                                }
                            ],
                        }
                    ],
                    "nextCursor": 1041,
                }
            ]
        }
    )

    items: list[Delivery] = Field(description="Deliveries, newest first.")
    nextCursor: int | None = Field(None, description="Pass as `before` for older deliveries.")


class ReplayRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"fromRevision": 1}]})

    fromRevision: int | None = Field(
        None, ge=0, le=2**62, description="Replay the events from this revision on."
    )
    since: BodyTime | None = Field(None, description="Replay the events committed since then.")
    toRevision: int | None = Field(
        None,
        ge=0,
        le=2**62,
        description="Up to this revision (inclusive); omitted: the newest when the call is made.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ReplayRequest:
        if (self.fromRevision is None) == (self.since is None):
            raise ValueError("give exactly one of fromRevision or since")
        if self.toRevision is not None and self.toRevision < (self.fromRevision or 0):
            raise ValueError("toRevision must not be below fromRevision")
        return self


class ReplayResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"scheduled": 2, "fromRevision": 1, "toRevision": 6}]}
    )

    scheduled: int = Field(description="Deliveries queued.")
    fromRevision: int | None = Field(
        description="The first revision looked at; null when there was none."
    )
    toRevision: int | None = Field(
        description="The last revision looked at; null when there was none."
    )


class RotateSecretRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{}, {"secret": "a-new-secret-of-mine"}]}
    )

    secret: Secret | None = Field(
        None, description="The new secret; generated (whsec_…) when omitted. Shown once."
    )


class SecretRotated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "sub_b70ba7a9e69214d03c5618e6",
                    "secret": "whsec_ZGVtby1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg==",
                    "previousSecretExpiresAt": "2026-11-28T10:00:00.000Z",
                }
            ]
        }
    )

    id: str = Field(description="The subscription id.")
    secret: str = Field(description="The new secret, shown only in this response.")
    previousSecretExpiresAt: Timestamp = Field(
        description="Until then deliveries are signed with the old secret too."
    )


class TestResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"succeeded": True, "statusCode": 200, "durationMs": 84, "error": None}]
        }
    )

    succeeded: bool = Field(description="Whether the receiver answered 2xx.")
    statusCode: int | None = Field(
        description="The receiver's HTTP status; null when it did not answer."
    )
    durationMs: int = Field(description="How long it took, ms.")
    error: str | None = Field(description="What went wrong; null on success.")
