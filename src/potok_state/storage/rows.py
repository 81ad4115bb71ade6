"""Reading state and outbox rows, shared by the store's reads and the writers'
guards."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson

from potok_state.changes.model import EventRecord, StoredState
from potok_state.storage.database import Database, PostgresDatabase, Row, Tx
from potok_state.storage.dialect import SQLITE, Dialect

STATE_COLUMNS = (
    "entity_type, entity_id, status, metadata, version, revision, created_at, updated_at, "
    "lease_ttl, lease_expires_at"
)
OUTBOX_COLUMNS = "revision, event_id, event, entity_type, entity_id, data, created_at"
GET_STATE = f"SELECT {STATE_COLUMNS} FROM states WHERE entity_type = $1 AND entity_id = $2"
# Many states of one type. PostgreSQL: one primary-key probe per id, whatever
# the statistics say. Written as `entity_id = ANY($2)`, a plan made while the
# table had no statistics yet (a new or fast-growing one) scanned every state
# of the type and compared it with each id: 100-300 ms for 1000 ids among
# 12,000 states. OFFSET 0 keeps the subquery from being flattened into a join
# that could be planned the same way.
_LOAD_POSTGRES = (
    "SELECT s.* FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL "
    f"(SELECT {STATE_COLUMNS} FROM states WHERE entity_type = $1 AND entity_id = k.key "
    "OFFSET 0) AS s"
)
_LOAD_SQLITE = (
    f"SELECT {STATE_COLUMNS} FROM states WHERE entity_type = $1 "
    f"AND entity_id {SQLITE.in_list('$2')}"
)


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
        lease_ttl=row["lease_ttl"],
        lease_expires_at=(
            None if row["lease_expires_at"] is None else dialect.read_time(row["lease_expires_at"])
        ),
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
            _LOAD_POSTGRES if dialect.name == "postgresql" else _LOAD_SQLITE,
            entity,
            dialect.text_list(list(dict.fromkeys(ids))),
        )
        for row in rows:
            found[row["entity_id"]] = state_from_row(dialect, row)
    return found


class StateReads:
    """Reads of single states by key, as the API's GETs make them.

    On PostgreSQL the reads asked for while the event loop runs one round are
    answered by one query (one round trip for all of them, each a round trip
    of client CPU saved under load); on SQLite each is a primary-key lookup on
    the loop's own connection, which costs less than gathering them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._gather = isinstance(db, PostgresDatabase)
        self._waiting: dict[tuple[str, str], list[asyncio.Future[StoredState | None]]] = {}
        self._flush: asyncio.Handle | None = None
        self._reads: set[asyncio.Task[None]] = set()

    async def get(self, entity: str, entity_id: str) -> StoredState | None:
        if not self._gather:
            found = await self.db.read_point(lambda tx: load_states(tx, [(entity, entity_id)]))
            return found.get(entity_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoredState | None] = loop.create_future()
        self._waiting.setdefault((entity, entity_id), []).append(future)
        if self._flush is None:
            self._flush = loop.call_soon(self._read_waiting)
        return await future

    def _read_waiting(self) -> None:
        waiting, self._waiting, self._flush = self._waiting, {}, None
        task = asyncio.get_running_loop().create_task(self._read(waiting))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read(
        self, waiting: dict[tuple[str, str], list[asyncio.Future[StoredState | None]]]
    ) -> None:
        keys = list(waiting)
        try:
            rows = await self.db.read(
                lambda tx: tx.fetch(
                    f"SELECT {STATE_COLUMNS} FROM states JOIN unnest($1::text[], $2::text[]) "
                    "AS k(entity_type, entity_id) USING (entity_type, entity_id)",
                    [entity for entity, _ in keys],
                    [entity_id for _, entity_id in keys],
                )
            )
        except Exception as exc:
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        found = {
            (row["entity_type"], row["entity_id"]): state_from_row(self.db.dialect, row)
            for row in rows
        }
        for key, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(key))
