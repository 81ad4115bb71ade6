"""Wire models of the webhooks API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from potok_state.changes.selection import EVENT_FILTER_PATTERN
from potok_state.clock import InputTime, Timestamp
from potok_state.states.schemas import EntityType

EventFilter = Annotated[str, StringConstraints(pattern=EVENT_FILTER_PATTERN)]
WebhookUrl = Annotated[str, StringConstraints(min_length=8, max_length=2048)]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=256)]
Description = Annotated[str, StringConstraints(max_length=500)]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    url: WebhookUrl
    events: list[EventFilter] = Field(min_length=1, max_length=50)
    secret: Secret | None = Field(
        None, description="Signing secret; generated (whsec_…) when omitted and shown once."
    )
    description: Description | None = None
    entityTypes: list[EntityType] | None = Field(
        None, max_length=100, description="Only entity events of these types."
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

    url: WebhookUrl | None = None
    events: list[EventFilter] | None = Field(None, min_length=1, max_length=50)
    description: Description | None = None
    entityTypes: list[EntityType] | None = Field(None, max_length=100)
    active: bool | None = Field(
        None, description="true re-enables a disabled subscription and resets its failures."
    )


class Subscription(BaseModel):
    id: str
    url: str
    events: list[str]
    entityTypes: list[str] | None
    description: str | None
    status: Literal["active", "disabled"]
    consecutiveFailures: int
    disabledReason: str | None
    lastDeliveryAt: Timestamp | None
    lastError: str | None
    createdAt: Timestamp
    updatedAt: Timestamp


class SubscriptionCreated(Subscription):
    secret: str = Field(description="Shown only in this response.")


class Attempt(BaseModel):
    attempt: int
    startedAt: Timestamp
    durationMs: int
    statusCode: int | None
    error: str | None
    succeeded: bool


class Delivery(BaseModel):
    id: int
    subscriptionId: str
    revision: int
    eventId: str
    event: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    nextAttemptAt: Timestamp | None
    lastStatusCode: int | None
    lastError: str | None
    createdAt: Timestamp
    updatedAt: Timestamp
    attemptLog: list[Attempt]


class DeliveryPage(BaseModel):
    items: list[Delivery]
    nextCursor: int | None = Field(None, description="Pass as `before` for older deliveries.")


class ReplayRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"fromRevision": 1}]})

    fromRevision: int | None = Field(None, ge=0, le=2**62)
    since: InputTime | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ReplayRequest:
        if (self.fromRevision is None) == (self.since is None):
            raise ValueError("give exactly one of fromRevision or since")
        return self


class ReplayResult(BaseModel):
    scheduled: int
    fromRevision: int | None
    toRevision: int | None


class TestResult(BaseModel):
    succeeded: bool
    statusCode: int | None
    durationMs: int
    error: str | None
