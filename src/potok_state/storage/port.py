"""The storage port: the one small interface the services use, implemented by
the SQL backend (`sql.py`, SQLite or PostgreSQL).

A change is applied by `StateStore.apply`: the store gets the current states of
the named entities (from a hint or the database, without locks), hands them to
the service's pure `decide` function, and writes what it returns (states,
history, outbox, idempotency record) in one transaction with fresh revisions,
if every entity is still at the version the decision saw; otherwise it decides
again (docs/architecture.md, "The write path"). Rules live in `decide`;
atomicity and ordering live in the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, Protocol

from potok_state.changes.model import (
    AppliedChange,
    Decide,
    EventData,
    EventRecord,
    HistoryRecord,
    StoredState,
)
from potok_state.kit.errors import Conflict
from potok_state.storage.idempotency import IdempotencyRecord, IdempotencyWrite

ChangeAnswer = IdempotencyWrite[Sequence[AppliedChange]]
"""The answer to a change made with an Idempotency-Key, stored with it."""


class SortField(StrEnum):
    ENTITY_ID = "entityId"
    CREATED_AT = "createdAt"
    UPDATED_AT = "updatedAt"
    STATUS = "status"
    VERSION = "version"


@dataclass(frozen=True, slots=True)
class StateQuery:
    entity: str
    statuses: tuple[str, ...] = ()
    metadata_equals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    sort: SortField = SortField.UPDATED_AT
    descending: bool = True
    after_key: tuple[str | int | datetime, str] | None = None
    limit: int = 50


class ListedState(NamedTuple):
    """One state of a query result as stored: metadata as its JSON text and
    times already in the API's form (`2025-11-10T10:00:00.000Z`), so a page is
    encoded without parsing either. A tuple: a page makes one per row, straight
    from the row's columns."""

    entity: str
    entity_id: str
    status: str
    metadata: str
    version: int
    revision: int
    created_at: str
    updated_at: str
    lease_ttl: int | None = None
    lease_expires_at: str | None = None


@dataclass(frozen=True, slots=True)
class ListedPage:
    """A query result and the revision it was read at: it holds every change up
    to `revision` and none after (list-then-watch resumes from there)."""

    states: list[ListedState]
    revision: int


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a heartbeat did to one state's lease: renewed (`expires_at` set),
    or why not (`found` False: no such state; otherwise it holds no lease, or
    the lease has lapsed)."""

    entity_id: str
    found: bool
    ttl: int | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DueLeases:
    """Leases that lapsed by `now` (the database's clock), oldest first."""

    now: datetime
    keys: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class RevisionBounds:
    """The change feed as stored: `head` is the newest revision, `oldest` the
    oldest one still kept (None when none is)."""

    oldest: int | None
    head: int


@dataclass(frozen=True, slots=True)
class StatusCount:
    """How many states of one type are in one status now."""

    entity: str
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class HistoryHorizon:
    """History rows up to `revision` (the newest pruned one, stamped
    `changed_at`) may have been pruned; every later row is kept."""

    revision: int
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class PastState:
    """What the store holds about one entity at a point of its history (a
    revision, or a time): its newest history row at or before the point, with
    the creation time of that row's life. Only when there is none: the event
    of its first row after the point, its current state and the horizon of
    pruned history, to tell "did not exist then" from "no longer kept"."""

    head: int
    """The newest revision of the store."""
    record: HistoryRecord | None
    created_at: datetime | None = None
    next_event: str | None = None
    current: StoredState | None = None
    horizon: HistoryHorizon | None = None


@dataclass(slots=True)
class WriteTicket:
    """One admitted change: the store sets the last revision it committed
    (0: it committed nothing)."""

    revision: int = 0


class WriteContention(Conflict):
    """A change was decided again and again because other writers kept changing
    its entities first; the client may retry."""

    code = "write_contention"


class StateStore(Protocol):
    async def apply(
        self,
        entity_ids: Sequence[tuple[str, str]],
        decide: Decide,
        event_data: EventData,
        idempotency: ChangeAnswer | None = None,
        hint: Mapping[str, StoredState | None] | None = None,
    ) -> list[AppliedChange]:
        """Decide the change on the current states of `entity_ids` and write
        it with fresh revisions in one transaction. `hint` holds states the
        caller believes current (None: absent), which are used instead of
        reading them; a wrong hint costs another decision, never a wrong write."""
        ...

    async def get_state(self, entity: str, entity_id: str) -> StoredState | None: ...

    async def query_states(self, query: StateQuery) -> ListedPage: ...

    async def history(
        self, entity: str, entity_id: str, after_revision: int, limit: int
    ) -> list[HistoryRecord]: ...

    async def changes(self, after_revision: int, limit: int) -> list[EventRecord]: ...

    async def recent_changes(self, after_revision: int, limit: int) -> list[EventRecord]:
        """As `changes`, for a reader that follows the head closely and reads a few
        small events at a time (the watch hub), cheaply."""
        ...

    async def history_at(self, entity: str, entity_id: str, point: int | datetime) -> PastState:
        """The entity as its history holds it at revision `point`, or at the
        newest revision committed at or before the time `point`."""
        ...

    async def revision_bounds(self) -> RevisionBounds: ...

    async def status_counts(self, entity: str | None = None) -> list[StatusCount]:
        """The states per type and status (of one type when `entity` is given),
        by type, then status."""
        ...

    async def change_counts(self, since: datetime) -> dict[str, int]:
        """The changes per entity type committed at or after `since` (custom
        events have no type and are not counted)."""
        ...

    async def renew_leases(
        self, entity: str, entity_ids: Sequence[str], ttl: int | None
    ) -> list[Renewal]:
        """Extend the leases of these states from now by `ttl` (or their own):
        no revision, no history, no event. A lapsed lease is not renewed."""
        ...

    async def due_leases(self, limit: int) -> DueLeases: ...

    async def drop_leases(
        self, entity: str, versions: Sequence[tuple[str, int]], lapsed_by: datetime
    ) -> None:
        """Remove lapsed leases from states still at these versions (a lapse
        that changes nothing: the state is already where it would go)."""
        ...

    async def idempotency_record(
        self, scope: str, not_before: datetime
    ) -> IdempotencyRecord | None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
