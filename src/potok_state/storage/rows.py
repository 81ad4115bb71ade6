"""Reading state and outbox rows, shared by the store's reads and the writers'
guards."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from potok_state.changes.model import EventRecord, StoredState
from potok_state.storage.database import Row, Tx
from potok_state.storage.dialect import Dialect

STATE_COLUMNS = (
    "entity_type, entity_id, status, metadata, version, revision, created_at, updated_at"
)
OUTBOX_COLUMNS = "revision, event_id, event, entity_type, entity_id, data, created_at"
GET_STATE = f"SELECT {STATE_COLUMNS} FROM states WHERE entity_type = $1 AND entity_id = $2"


def state_from_row(dialect: Dialect, row: Row) -> StoredState:
    return StoredState(
        entity=row["entity_type"],
        entity_id=row["entity_id"],
        status=row["status"],
        metadata=orjson.loads(row["metadata"]),
        version=row["version"],
        revision=row["revision"],
        created_at=dialect.read_time(row["created_at"]),
        updated_at=dialect.read_time(row["updated_at"]),
    )


def event_record(dialect: Dialect, row: Row) -> EventRecord:
    """An outbox row (or a row carrying the outbox columns) as an EventRecord."""
    return EventRecord(
        revision=row["revision"],
        event_id=row["event_id"],
        event=row["event"],
        entity=row["entity_type"],
        entity_id=row["entity_id"],
        data=row["data"],
        created_at=dialect.read_time(row["created_at"]),
    )


async def load_states(tx: Tx, targets: Sequence[tuple[str, str]]) -> dict[str, StoredState]:
    """The current states of `targets`, by entity id (absent ones left out)."""
    dialect = tx.dialect
    if len(targets) == 1:
        entity, entity_id = targets[0]
        row = await tx.fetchrow(GET_STATE, entity, entity_id)
        return {} if row is None else {entity_id: state_from_row(dialect, row)}
    by_type: dict[str, list[str]] = {}
    for entity, entity_id in targets:
        by_type.setdefault(entity, []).append(entity_id)
    found: dict[str, StoredState] = {}
    for entity, ids in by_type.items():
        rows = await tx.fetch(
            f"SELECT {STATE_COLUMNS} FROM states WHERE entity_type = $1 "
            f"AND entity_id {dialect.in_list('$2')}",
            entity,
            dialect.text_list(list(dict.fromkeys(ids))),
        )
        for row in rows:
            found[row["entity_id"]] = state_from_row(dialect, row)
    return found
