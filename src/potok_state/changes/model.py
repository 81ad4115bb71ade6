"""The records of the change pipeline: what a change is (a `Mutation`), what the
store made of it (an `AppliedChange` with its revision), and the rows it leaves
(the state, its history entry, its outbox event).

A change is decided by a pure function over the current states (`Decide`) and
applied by the store in one transaction with a fresh revision (docs/data-model.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import JsonValue

JsonObject = dict[str, JsonValue]


class EventType(StrEnum):
    CREATED = "entity.created"
    UPDATED = "entity.updated"
    DELETED = "entity.deleted"


@dataclass(frozen=True, slots=True)
class StoredState:
    entity: str
    entity_id: str
    status: str
    metadata: JsonObject
    version: int
    revision: int
    created_at: datetime
    updated_at: datetime
    lease_ttl: int | None = None
    """Seconds a heartbeat or write extends the lease by; None: no lease."""
    lease_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    revision: int
    entity: str
    entity_id: str
    version: int
    event: str
    previous_status: str | None
    new_status: str | None
    metadata: JsonObject
    reason: str | None
    actor: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One outbox row: a change as the outside world sees it."""

    revision: int
    event_id: str
    event: str
    entity: str | None
    entity_id: str | None
    data: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StateChange:
    """A decided change of one entity; `status` is None for a deletion."""

    entity: str
    entity_id: str
    event: EventType
    status: str | None
    previous_status: str | None
    metadata: JsonObject
    version: int
    reason: str | None
    actor: str
    lease_ttl: int | None = None
    """The state's lease after the change (renewed from the commit time); None: none."""


@dataclass(frozen=True, slots=True)
class CustomEvent:
    event: str
    data: JsonObject
    actor: str


Mutation = StateChange | CustomEvent


@dataclass(frozen=True, slots=True)
class AppliedChange:
    mutation: Mutation
    revision: int
    event_id: str
    timestamp: datetime
    state: StoredState | None = None


Decide = Callable[[Mapping[str, StoredState]], Sequence[Mutation]]
EventData = Callable[[Mutation], str]
