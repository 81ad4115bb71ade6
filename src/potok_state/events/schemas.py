"""Wire models of the change feed: each item is the event payload of docs/data-model.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from potok_state.clock import Timestamp


class Event(BaseModel):
    id: str
    event: str
    revision: int
    timestamp: Timestamp
    data: dict[str, JsonValue]


class ChangePage(BaseModel):
    items: list[Event]
    nextAfter: int


class PublishEvent(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"type": "custom.deploy", "data": {"service": "billing", "version": "1.4.2"}}
            ]
        },
    )

    type: Annotated[str, StringConstraints(pattern=r"^custom\.[a-z0-9][a-z0-9_.-]{0,99}$")] = Field(
        description='"custom.event" or "custom.<name>".'
    )
    data: dict[str, JsonValue] = Field(default_factory=dict)
