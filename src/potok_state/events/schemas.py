"""Wire models of the change feed: each item is the event payload of docs/data-model.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from potok_state.clock import Timestamp
from potok_state.kit.request_model import RequestModel


class Event(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "evt_673218811e5fafbd6d29479c0dcef4e2",
                    "event": "custom.deploy",
                    "revision": 3,
                    "timestamp": "2026-11-27T10:15:00.000Z",
                    "data": {"service": "billing", "version": "1.4.2"},
                }
            ]
        }
    )

    id: str = Field(
        description="The event id (evt_…): the same in the feed, watch streams and every "
        "webhook delivery of it."
    )
    event: str = Field(
        description="entity.created, entity.updated, entity.deleted, custom.<name> or "
        "subscription.<what>."
    )
    revision: int = Field(
        description="Store-wide revision: events are in this order, and `after=` resumes from it."
    )
    timestamp: Timestamp = Field(description="Commit time.")
    data: dict[str, JsonValue] = Field(
        description="For entity events: entity, id, version, previousStatus, newStatus, "
        "metadata, reason, actor; for custom events, the published data."
    )


class ChangePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": "evt_5af4d9902fc15f762e70470a54d2e861",
                            "event": "entity.updated",
                            "revision": 2,
                            "timestamp": "2026-11-27T10:05:00.000Z",
                            "data": {
                                "entity": "task",
                                "id": "task_123",
                                "version": 2,
                                "previousStatus": "in_progress",
                                "newStatus": "completed",
                                "metadata": {"assignee": "user_789", "priority": "high"},
                                "reason": "done",
                            },
                        },
                        {
                            "id": "evt_673218811e5fafbd6d29479c0dcef4e2",
                            "event": "custom.deploy",
                            "revision": 3,
                            "timestamp": "2026-11-27T10:15:00.000Z",
                            "data": {"service": "billing", "version": "1.4.2"},
                        },
                    ],
                    "nextAfter": 3,
                }
            ]
        }
    )

    items: list[Event] = Field(description="Changes and custom events, in revision order.")
    nextAfter: int = Field(
        description="Pass as `after` for the next page: the last revision of this one."
    )


class PublishEvent(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"type": "custom.deploy", "data": {"service": "billing", "version": "1.4.2"}}
            ]
        },
    )

    type: Annotated[str, StringConstraints(pattern=r"^custom\.[a-z0-9][a-z0-9_.-]{0,99}$")] = Field(
        description='"custom.event" or "custom.<name>".'
    )
    data: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Any JSON object, delivered as the event's data (at most METADATA_MAX_BYTES).",
    )
