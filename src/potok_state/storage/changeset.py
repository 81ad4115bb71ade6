"""The rows one change writes, worked out before the database is touched.

Given the states a decision was made on and the mutations it returned, a
`ChangeSet` holds every row to write (final state per entity, a history row
and an outbox event per mutation) with *offsets* instead of revisions: the
database stamps `base + offset` and one commit time when it takes the
revisions, so the same rows serve SQLite's writer and PostgreSQL's single
statement. It also holds the versions the decision saw (`expected`): the write
goes through only if every entity is still at that version (0: absent).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from potok_state.changes.model import (
    AppliedChange,
    CustomEvent,
    Decide,
    EventData,
    EventType,
    Mutation,
    StateChange,
    StoredState,
)


@dataclass(frozen=True, slots=True)
class Decision:
    """A change to apply: its targets and the pure function that decides it
    on their current states. Deciding again on fresher states is always safe."""

    targets: Sequence[tuple[str, str]]
    decide: Decide
    event_data: EventData

    def changes(self, current: Mapping[str, StoredState]) -> ChangeSet | None:
        """The change set decided on `current`; None when nothing is to change."""
        mutations = self.decide(current)
        if not mutations:
            return None
        return ChangeSet.build(self.targets, current, mutations, self.event_data)


@dataclass(slots=True)
class StateRow:
    entity: str
    entity_id: str
    status: str
    metadata: str
    version: int
    offset: int
    is_new: bool
    """Insert a row created at the commit time; otherwise update the row (its
    creation time stays)."""
    lease_ttl: int | None = None


@dataclass(slots=True)
class HistoryRow:
    offset: int
    entity: str
    entity_id: str
    version: int
    event: str
    previous_status: str | None
    new_status: str | None
    metadata: str
    reason: str | None
    actor: str
    created_at: datetime | None = None
    """The creation time of the entity's life (None: the commit time, or a deletion)."""


@dataclass(slots=True)
class EventRow:
    offset: int
    event_id: str
    event: str
    entity: str | None
    entity_id: str | None
    data: str


@dataclass(frozen=True, slots=True)
class ChangeSet:
    mutations: Sequence[Mutation]
    expected: list[tuple[str, str, int]]
    states: list[StateRow]
    deletes: list[tuple[str, str]]
    history: list[HistoryRow]
    events: list[EventRow]
    created_at: list[datetime | None]
    """Per mutation: the creation time of the state it leaves (None: now)."""

    @property
    def count(self) -> int:
        return len(self.mutations)

    @classmethod
    def build(
        cls,
        targets: Sequence[tuple[str, str]],
        current: Mapping[str, StoredState],
        mutations: Sequence[Mutation],
        event_data: EventData,
    ) -> ChangeSet:
        expected: dict[tuple[str, str], int] = {}
        for entity, entity_id in targets:
            existing = current.get(entity_id)
            same = existing is not None and existing.entity == entity
            expected[(entity, entity_id)] = existing.version if same and existing else 0
        # Per entity: its creation time as the mutations go (None: created here).
        created: dict[tuple[str, str], datetime | None] = {
            key: current[key[1]].created_at for key, version in expected.items() if version
        }
        final: dict[tuple[str, str], tuple[StateChange, int, datetime | None, str] | None] = {}
        history: list[HistoryRow] = []
        events: list[EventRow] = []
        created_at: list[datetime | None] = []
        event_ids = new_event_ids(len(mutations))
        for offset, mutation in enumerate(mutations, start=1):
            if isinstance(mutation, CustomEvent):
                events.append(
                    EventRow(
                        offset,
                        event_ids[offset - 1],
                        mutation.event,
                        None,
                        None,
                        event_data(mutation),
                    )
                )
                created_at.append(None)
                continue
            key = (mutation.entity, mutation.entity_id)
            metadata = orjson.dumps(mutation.metadata).decode()
            since: datetime | None = None
            if mutation.status is None:
                final[key] = None
                created.pop(key, None)
                created_at.append(None)
            else:
                if mutation.event is EventType.CREATED or key not in created:
                    created[key] = None
                since = created[key]
                final[key] = (mutation, offset, since, metadata)
                created_at.append(since)
            history.append(
                HistoryRow(
                    offset,
                    mutation.entity,
                    mutation.entity_id,
                    mutation.version,
                    mutation.event.value,
                    mutation.previous_status,
                    mutation.status,
                    metadata,
                    mutation.reason,
                    mutation.actor,
                    since,
                )
            )
            events.append(
                EventRow(
                    offset,
                    event_ids[offset - 1],
                    mutation.event.value,
                    mutation.entity,
                    mutation.entity_id,
                    event_data(mutation),
                )
            )
        states: list[StateRow] = []
        deletes: list[tuple[str, str]] = []
        for key, outcome in final.items():
            existed = expected.get(key, 0) > 0
            if outcome is None:
                if existed:
                    deletes.append(key)
                continue
            change, offset, since, metadata = outcome
            assert change.status is not None
            reborn = existed and since is None
            if reborn:  # deleted and created again in this change set: a new row
                deletes.append(key)
            states.append(
                StateRow(
                    entity=change.entity,
                    entity_id=change.entity_id,
                    status=change.status,
                    metadata=metadata,
                    version=change.version,
                    offset=offset,
                    is_new=reborn or not existed,
                    lease_ttl=change.lease_ttl,
                )
            )
        return cls(
            mutations=mutations,
            expected=[
                (entity, entity_id, version) for (entity, entity_id), version in expected.items()
            ],
            states=states,
            deletes=deletes,
            history=history,
            events=events,
            created_at=created_at,
        )

    def applied(self, base: int, at: datetime) -> list[AppliedChange]:
        """What the change set became once stamped with revisions base+1… and
        the commit time `at`."""
        event_ids = iter(row.event_id for row in self.events)
        applied: list[AppliedChange] = []
        for offset, (mutation, since) in enumerate(
            zip(self.mutations, self.created_at, strict=True), start=1
        ):
            state = None
            if isinstance(mutation, StateChange) and mutation.status is not None:
                state = StoredState(
                    entity=mutation.entity,
                    entity_id=mutation.entity_id,
                    status=mutation.status,
                    metadata=mutation.metadata,
                    version=mutation.version,
                    revision=base + offset,
                    created_at=since or at,
                    updated_at=at,
                    lease_ttl=mutation.lease_ttl,
                    lease_expires_at=lease_expiry(at, mutation.lease_ttl),
                )
            applied.append(AppliedChange(mutation, base + offset, next(event_ids), at, state))
        return applied


def lease_expiry(at: datetime, ttl: int | None) -> datetime | None:
    return None if ttl is None else at + timedelta(seconds=ttl)


def new_event_ids(count: int) -> list[str]:
    """`count` random event ids (evt_ + 32 hex digits), from one read of the
    system's random source rather than one per id."""
    raw = os.urandom(16 * count).hex()
    return ["evt_" + raw[32 * i : 32 * (i + 1)] for i in range(count)]
