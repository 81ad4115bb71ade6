"""Stored state-machine definitions: the rows of `state_machine_definitions` and
`state_machine_history`, and the one transaction that changes a definition
(docs/data-model.md, "Definitions over the API").

A change is a revision like any other: in one transaction it takes the next
revision, writes the definition (its version + 1; a removal keeps the row with
no table, so versions never repeat), a history row with the table before and
after, and a `machine.updated` outbox event, which webhooks, the change feed,
watch streams and the event stream then carry like every event. On PostgreSQL
it also NOTIFYs `potok_machines`, which every process listens to and answers
by reloading the definitions (states/machine_service.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from pydantic import JsonValue

from potok_state.clock import utc_now
from potok_state.states.errors import MachineNotFound, StatesStranded, VersionMismatch
from potok_state.storage.changeset import new_event_ids
from potok_state.storage.commits import MACHINES_CHANNEL, OUTBOX_CHANNEL
from potok_state.storage.database import Row, Tx
from potok_state.storage.idempotency import IdempotencyWrite, keyed
from potok_state.storage.sql import SqlStateStore

MACHINE_UPDATED = "machine.updated"

Table = dict[str, JsonValue]


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    entity: str
    version: int
    table: Table | None
    """None: the definition was removed (the type has no API table)."""
    revision: int
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True)
class DefinitionRecord:
    """One change of a definition, as `GET /state-machines/{entity}/history` shows it."""

    revision: int
    entity: str
    version: int
    previous: str | None
    definition: str | None
    """The tables as stored JSON text (None: none)."""
    actor: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class DefinitionChange:
    entity: str
    table: Table | None
    """The new table; None removes the definition."""
    actor: str
    expected_version: int | None = None
    """If-Match: change only the definition at this version (0: none yet)."""
    statuses: Sequence[str] | None = None
    """Refuse the change while states of the type hold a status outside these
    (None: no such check: `?force=true`, or a removal)."""


@dataclass(frozen=True, slots=True)
class ChangedDefinition:
    stored: StoredDefinition
    previous: StoredDefinition | None
    changed: bool
    """False: this table was already stored; nothing was written."""


class _Unchanged(Exception):
    def __init__(self, stored: StoredDefinition) -> None:
        self.stored = stored


class DefinitionRepository:
    def __init__(self, store: SqlStateStore) -> None:
        self.store = store
        self.db = store.db
        self.dialect = store.dialect

    async def load_all(self) -> list[StoredDefinition]:
        """Every type ever defined over the API, removed ones included."""
        rows = await self.db.read(lambda tx: tx.fetch(_ALL))
        return [self._stored(row) for row in rows]

    async def generation(self) -> int:
        """Grows with every change of any definition: a cheap look for news."""
        value = await self.db.read_point(lambda tx: tx.fetchval(_GENERATION))
        return int(value or 0)

    async def history(self, entity: str, after_revision: int, limit: int) -> list[DefinitionRecord]:
        """The changes after a revision, oldest first."""
        rows = await self.db.read(lambda tx: tx.fetch(_HISTORY, entity, after_revision, limit))
        return [self._record(entity, row) for row in rows]

    async def latest(self, entity: str, limit: int) -> list[DefinitionRecord]:
        """The newest changes, newest first."""
        rows = await self.db.read(lambda tx: tx.fetch(_LATEST, entity, limit))
        return [self._record(entity, row) for row in rows]

    def _record(self, entity: str, row: Row) -> DefinitionRecord:
        return DefinitionRecord(
            revision=int(row["revision"]),
            entity=entity,
            version=int(row["version"]),
            previous=row["previous"],
            definition=row["definition"],
            actor=row["actor"],
            changed_at=self.dialect.read_time(row["changed_at"]),
        )

    async def change(
        self,
        change: DefinitionChange,
        idempotency: IdempotencyWrite[ChangedDefinition] | None = None,
    ) -> ChangedDefinition:
        """Apply `change` in one transaction (see the module docstring), with
        its answer for an Idempotency-Key when given one."""
        try:
            return await self.db.write(keyed(lambda tx: self._change(tx, change), idempotency))
        except _Unchanged as unchanged:
            return ChangedDefinition(unchanged.stored, unchanged.stored, changed=False)

    async def _change(self, tx: Tx, change: DefinitionChange) -> ChangedDefinition:
        dialect = tx.dialect
        entity = change.entity
        if change.statuses is not None:
            # Before the counter's lock is taken: on a large type this is the
            # slow part, and no other write waits for it.
            rows = await tx.fetch(
                "SELECT status, count(*) AS n FROM states WHERE entity_type = $1 "
                f"AND status {dialect.not_in_list('$2')} GROUP BY status ORDER BY status",
                entity,
                dialect.text_list(list(change.statuses)),
            )
            if rows:
                stranded: dict[str, JsonValue] = {row["status"]: int(row["n"]) for row in rows}
                raise StatesStranded(
                    f"{sum(int(row['n']) for row in rows)} {entity} state(s) hold statuses the "
                    f"definition does not have ({', '.join(stranded)}); change them first, or "
                    "send ?force=true to leave them as they are.",
                    details={"entity": entity, "stranded": stranded},
                )
        # The counter first: it orders this change among all others and
        # serializes changes of definitions (a first definition has no row to lock).
        if dialect.name == "postgresql":
            bumped = await tx.fetchrow(_BUMP_POSTGRES)
            assert bumped is not None, "revision_counter is missing its row; run migrations"
            revision, at = int(bumped["value"]), bumped["at"]
        else:
            revision = int(await tx.fetchval(_BUMP_SQLITE))
            at = utc_now()
        row = await tx.fetchrow(_ONE, entity)
        previous = None if row is None else self._stored(row)
        held = 0 if previous is None or previous.table is None else previous.version
        if change.expected_version is not None and change.expected_version != held:
            raise VersionMismatch(
                f"The {entity} definition is at version {held}, not {change.expected_version}.",
                details={"currentVersion": held, "expectedVersion": change.expected_version},
            )
        if change.table is None and held == 0:
            raise MachineNotFound(f"Entity type {entity!r} has no definition made over the API.")
        if previous is not None and previous.table == change.table:
            raise _Unchanged(previous)
        version = 1 if previous is None else previous.version + 1
        stored = StoredDefinition(entity, version, change.table, revision, at, change.actor)
        text = _json(change.table)
        when = dialect.time(at)
        await tx.execute(_UPSERT, entity, version, text, revision, when, change.actor)
        await tx.execute(
            _INSERT_HISTORY,
            revision,
            entity,
            version,
            _json(None if previous is None else previous.table),
            text,
            change.actor,
            when,
        )
        data = {
            "entity": entity,
            "version": version,
            "previousVersion": held or None,
            "definition": change.table,
        }
        await tx.execute(
            _INSERT_EVENT,
            revision,
            new_event_ids(1)[0],
            MACHINE_UPDATED,
            entity,
            orjson.dumps(data).decode(),
            when,
        )
        if dialect.name == "postgresql":
            await tx.execute(_NOTIFY, str(revision))
        return ChangedDefinition(stored, previous, changed=True)

    def _stored(self, row: Row) -> StoredDefinition:
        text = row["definition"]
        return StoredDefinition(
            entity=row["entity_type"],
            version=int(row["version"]),
            table=None if text is None else orjson.loads(text),
            revision=int(row["revision"]),
            updated_at=self.dialect.read_time(row["updated_at"]),
            updated_by=row["updated_by"],
        )


def _json(table: Table | None) -> str | None:
    return None if table is None else orjson.dumps(table).decode()


_COLUMNS = "entity_type, version, definition, revision, updated_at, updated_by"
_ALL = f"SELECT {_COLUMNS} FROM state_machine_definitions ORDER BY entity_type"
_ONE = f"SELECT {_COLUMNS} FROM state_machine_definitions WHERE entity_type = $1"
_GENERATION = "SELECT max(revision) FROM state_machine_definitions"
_HISTORY = (
    "SELECT revision, version, previous, definition, actor, changed_at "
    "FROM state_machine_history WHERE entity_type = $1 AND revision > $2 "
    "ORDER BY revision LIMIT $3"
)
_LATEST = (
    "SELECT revision, version, previous, definition, actor, changed_at "
    "FROM state_machine_history WHERE entity_type = $1 ORDER BY revision DESC LIMIT $2"
)
_BUMP_SQLITE = "UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value"
# The database's clock, as every change on PostgreSQL is stamped (storage/writers.py).
_BUMP_POSTGRES = (
    "UPDATE revision_counter SET value = value + 1 WHERE id = 1 "
    "RETURNING value, date_trunc('milliseconds', clock_timestamp()) AS at"
)
_UPSERT = (
    "INSERT INTO state_machine_definitions (entity_type, version, definition, revision, "
    "updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6) "
    "ON CONFLICT (entity_type) DO UPDATE SET version = excluded.version, "
    "definition = excluded.definition, revision = excluded.revision, "
    "updated_at = excluded.updated_at, updated_by = excluded.updated_by"
)
_INSERT_HISTORY = (
    "INSERT INTO state_machine_history (revision, entity_type, version, previous, definition, "
    "actor, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
_INSERT_EVENT = (
    "INSERT INTO outbox (revision, event_id, event, entity_type, entity_id, data, created_at) "
    "VALUES ($1, $2, $3, $4, NULL, $5, $6)"
)
# Delivered at commit: the dispatcher and watch hubs hear of the event, every
# process's definitions follow.
_NOTIFY = f"SELECT pg_notify('{OUTBOX_CHANNEL}', $1), pg_notify('{MACHINES_CHANNEL}', $1)"
