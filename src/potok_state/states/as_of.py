"""Reads as of a revision or a time (docs/data-model.md, "Reads as of a revision
or a time"): `GET /states/{entity}/{id}?asOf=N` or `?asOf=<RFC 3339 time>`.

Every history row holds the whole state the change left (status, metadata,
version, the creation time of its life, its commit time), so the answer is the
entity's newest row at or before the point, read by one indexed lookup, never
a replay. When there is no such row the entity either did not exist then
(404) or the rows that would say are pruned (410); retention's horizon and the
entity's next row tell which.
"""

from __future__ import annotations

import re
from datetime import datetime

from potok_state.changes.model import EventType, StoredState
from potok_state.clock import as_utc, format_timestamp
from potok_state.events.service import RevisionPruned
from potok_state.kit.errors import InvalidInput
from potok_state.states.encoding import EncodedState
from potok_state.states.errors import StateDeleted, StateNotFound
from potok_state.storage.port import PastState, StateStore

AsOf = int | datetime
"""A revision, or a time (UTC)."""

AS_OF_PARAMETER = "asOf"
MAX_REVISION = 2**63 - 1
# RFC 3339's date-time; without an offset the time is read as UTC.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})?$"
)


class InvalidAsOf(InvalidInput):
    code = "invalid_as_of"


class RevisionUnknown(InvalidInput):
    code = "revision_unknown"


def parse_as_of(raw: str) -> AsOf:
    """A revision (digits) or an RFC 3339 time; `InvalidAsOf` otherwise."""
    text = raw.strip()
    if text.isascii() and text.isdigit():
        if len(text) > 19 or int(text) > MAX_REVISION:
            raise InvalidAsOf(f"asOf {raw!r} is beyond any revision.", details={"asOf": raw})
        return int(text)
    try:
        if not _RFC3339.match(text):
            raise ValueError(text)
        return as_utc(datetime.fromisoformat(text.upper().replace("Z", "+00:00")))
    except ValueError:
        raise InvalidAsOf(
            f"asOf must be a revision (a whole number) or an RFC 3339 time such as "
            f"2026-11-27T10:00:00Z, not {raw!r}.",
            details={"asOf": raw},
        ) from None


async def read_as_of(store: StateStore, entity: str, entity_id: str, point: AsOf) -> EncodedState:
    past = await store.history_at(entity, entity_id, point)
    return EncodedState.of(past_state(entity, entity_id, point, past))


def past_state(entity: str, entity_id: str, point: AsOf, past: PastState) -> StoredState:
    """The state `past` shows at `point`, or the error that says why there is none."""
    where = _describe(point)
    if isinstance(point, int) and point > past.head:
        raise RevisionUnknown(
            f"Revision {point} has not happened yet; the newest is {past.head}.",
            details={"asOf": point, "revision": past.head},
        )
    record = past.record
    if record is not None:
        if record.event == EventType.DELETED or record.new_status is None:
            raise StateDeleted(
                f"{entity} {entity_id!r} was deleted {where} (at revision {record.revision}).",
                details={"deletedAt": record.revision, "version": record.version},
            )
        if past.created_at is None:
            raise _pruned(entity, entity_id, where, past)
        return StoredState(
            entity=entity,
            entity_id=entity_id,
            status=record.new_status,
            metadata=record.metadata,
            version=record.version,
            revision=record.revision,
            created_at=past.created_at,
            updated_at=record.changed_at,
        )
    current = past.current
    if current is not None and _not_after(current, point):
        # Unchanged since then; its rows are pruned, the state row still says it.
        return StoredState(
            entity=entity,
            entity_id=entity_id,
            status=current.status,
            metadata=current.metadata,
            version=current.version,
            revision=current.revision,
            created_at=current.created_at,
            updated_at=current.updated_at,
        )
    horizon = past.horizon
    pruned_there = horizon is not None and (
        point <= horizon.revision if isinstance(point, int) else point <= horizon.changed_at
    )
    if not pruned_there and past.next_event in (None, EventType.CREATED.value):
        raise StateNotFound(
            f"No {entity} with id {entity_id!r} existed {where}.",
            details={"asOf": _wire(point)},
        )
    raise _pruned(entity, entity_id, where, past)


def _not_after(state: StoredState, point: AsOf) -> bool:
    if isinstance(point, int):
        return state.revision <= point
    return state.updated_at <= point


def _pruned(entity: str, entity_id: str, where: str, past: PastState) -> RevisionPruned:
    horizon = past.horizon
    return RevisionPruned(
        f"The history of {entity} {entity_id!r} {where} is no longer kept (HISTORY_RETENTION).",
        details={"prunedThrough": None if horizon is None else horizon.revision},
    )


def _describe(point: AsOf) -> str:
    return f"at revision {point}" if isinstance(point, int) else f"at {format_timestamp(point)}"


def _wire(point: AsOf) -> int | str:
    return point if isinstance(point, int) else format_timestamp(point)
