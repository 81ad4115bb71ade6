"""Wire models of the change feed: each item is the event payload of DESIGN.md §4."""

from __future__ import annotations

from pydantic import BaseModel, JsonValue

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
