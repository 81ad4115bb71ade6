"""The SQL backend of the storage port, for SQLite (embedded) and PostgreSQL,
on the raw drivers (stdlib sqlite3, asyncpg); SQLAlchemy describes the schema
for Alembic only.

Applying a change (docs/architecture.md, "The write path")
    1. Read the current states of the targets, without locks.
    2. Decide (the service's pure function) on what was read.
    3. Write the `ChangeSet` with a guard: every target must still be at the
       version the decision saw. If one is not, nothing is written and the
       change is decided again on fresh states.
    SQLite writes in the writer thread, grouped with other changes into one
    commit (`database.SqliteWriter`). PostgreSQL writes with one statement in
    its own implicit transaction: it locks the targets, checks their versions,
    takes the revisions from `revision_counter` and writes states, history and
    outbox. No lock is held while the client works, and the counter's row lock
    only from the revision bump to the commit, inside the server: revisions
    still commit in order (a reader that has seen N has seen everything below
    N), without a convoy behind a busy event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import orjson

from potok_state.changes.model import (
    AppliedChange,
    Decide,
    EventData,
    EventRecord,
    HistoryRecord,
    IdempotencyRecord,
    IdempotencyWrite,
    StoredState,
)
from potok_state.clock import utc_now
from potok_state.storage.changeset import ChangeSet
from potok_state.storage.commits import OUTBOX_CHANNEL, CommitFeed
from potok_state.storage.database import (
    Database,
    PostgresDatabase,
    Row,
    SqliteDatabase,
    Tx,
    open_database,
)
from potok_state.storage.dialect import Dialect
from potok_state.storage.port import (
    IdempotencyConflict,
    SortField,
    StateQuery,
    WriteContention,
)

MAX_ATTEMPTS = 32

STATE_COLUMNS = (
    "entity_type, entity_id, status, metadata, version, revision, created_at, updated_at"
)
_SORT_COLUMNS = {
    SortField.ENTITY_ID: "entity_id",
    SortField.CREATED_AT: "created_at",
    SortField.UPDATED_AT: "revision",
    SortField.STATUS: "status",
    SortField.VERSION: "version",
}


CommitHook = Callable[[Sequence[AppliedChange]], None]
"""Told of a change set as it commits: on SQLite in the writer thread, under
the write lock, just before COMMIT; on PostgreSQL as soon as the statement
returns. It must be quick and thread-safe (the cache raises its revision
floors here, so no process of the host serves the older state from then on)."""


class SqlStateStore:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 16,
        sqlite_synchronous: str = "full",
        commit_hook: CommitHook | None = None,
    ) -> None:
        self.url = url
        self.db: Database = open_database(url, pool_size=pool_size, synchronous=sqlite_synchronous)
        self.dialect: Dialect = self.db.dialect
        self.commits = CommitFeed(
            postgres_dsn=self.db.dsn if isinstance(self.db, PostgresDatabase) else None
        )
        hook = commit_hook or _no_hook
        self._writer: _ChangeWriter = (
            _SqliteChangeWriter(self.db, hook)
            if isinstance(self.db, SqliteDatabase)
            else _PostgresChangeWriter(self.db, hook)  # type: ignore[arg-type]
        )

    @property
    def is_sqlite(self) -> bool:
        return isinstance(self.db, SqliteDatabase)

    async def close(self) -> None:
        await self.commits.stop()
        await self.db.close()

    async def ping(self) -> None:
        await self.db.ping()

    # -- writes -------------------------------------------------------------------

    async def apply(
        self,
        entity_ids: Sequence[tuple[str, str]],
        decide: Decide,
        event_data: EventData,
        idempotency: IdempotencyWrite | None = None,
    ) -> list[AppliedChange]:
        for _ in range(MAX_ATTEMPTS):
            # A turn for the loop first: answers of changes already committed
            # (callbacks from the SQLite writer) are delivered before this one
            # is decided, and a client cannot spin on a path that never awaits
            # (a near-cache read followed by a refused write).
            await asyncio.sleep(0)
            current = await self._load_states(entity_ids)
            mutations = decide(current)
            if not mutations:
                return []
            changes = ChangeSet.build(entity_ids, current, mutations, event_data)
            applied = await self._writer.commit(changes, idempotency)
            if applied is not None:
                self.commits.local()
                return applied
        raise WriteContention(
            "Too many concurrent writes to the same entities; try again.",
            details={"attempts": MAX_ATTEMPTS},
        )

    async def _load_states(self, entity_ids: Sequence[tuple[str, str]]) -> dict[str, StoredState]:
        if not entity_ids:
            return {}
        dialect = self.dialect
        if len(entity_ids) == 1:
            entity, entity_id = entity_ids[0]
            row = await self.db.read_point(lambda tx: tx.fetchrow(_GET_STATE, entity, entity_id))
            return {} if row is None else {entity_id: _state(dialect, row)}
        by_type: dict[str, list[str]] = {}
        for entity, entity_id in entity_ids:
            by_type.setdefault(entity, []).append(entity_id)

        async def load(tx: Tx) -> list[Row]:
            rows: list[Row] = []
            for entity, ids in by_type.items():
                rows.extend(
                    await tx.fetch(
                        _load_many(dialect), entity, dialect.text_list(list(dict.fromkeys(ids)))
                    )
                )
            return rows

        rows = await self.db.read(load)
        return {row["entity_id"]: _state(dialect, row) for row in rows}

    # -- reads --------------------------------------------------------------------

    async def get_state(self, entity: str, entity_id: str) -> StoredState | None:
        row = await self.db.read_point(lambda tx: tx.fetchrow(_GET_STATE, entity, entity_id))
        return None if row is None else _state(self.dialect, row)

    async def query_states(self, query: StateQuery) -> list[StoredState]:
        dialect = self.dialect
        args: list[object] = [query.entity]
        conditions = ["entity_type = $1"]

        def param(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.statuses:
            conditions.append(
                f"status {dialect.in_list(param(dialect.text_list(list(query.statuses))))}"
            )
        for key, candidates in query.metadata_equals.items():
            field = dialect.json_field_text("metadata", param(key))
            conditions.append(
                f"{field} {dialect.in_list(param(dialect.text_list(list(candidates))))}"
            )
        if query.updated_after is not None:
            conditions.append(f"updated_at > {param(dialect.time(query.updated_after))}")
        if query.updated_before is not None:
            conditions.append(f"updated_at < {param(dialect.time(query.updated_before))}")
        column = _SORT_COLUMNS[query.sort]
        if query.after_key is not None:
            value, after_id = query.after_key
            bound = dialect.time(value) if isinstance(value, datetime) else value
            operator = "<" if query.descending else ">"
            conditions.append(
                f"({column}, entity_id) {operator} ({param(bound)}, {param(after_id)})"
            )
        direction = "DESC" if query.descending else "ASC"
        sql = (
            f"SELECT {STATE_COLUMNS} FROM states WHERE {' AND '.join(conditions)} "
            f"ORDER BY {column} {direction}, entity_id {direction} LIMIT {param(query.limit)}"
        )
        rows = await self.db.read(lambda tx: tx.fetch(sql, *args))
        return [_state(dialect, row) for row in rows]

    async def history(
        self, entity: str, entity_id: str, after_revision: int, limit: int
    ) -> list[HistoryRecord]:
        rows = await self.db.read(
            lambda tx: tx.fetch(_HISTORY, entity, entity_id, after_revision, limit)
        )
        read_time = self.dialect.read_time
        return [
            HistoryRecord(
                revision=row["revision"],
                entity=entity,
                entity_id=entity_id,
                version=row["version"],
                event=row["event"],
                previous_status=row["previous_status"],
                new_status=row["new_status"],
                metadata=orjson.loads(row["metadata"]),
                reason=row["reason"],
                actor=row["actor"],
                changed_at=read_time(row["changed_at"]),
            )
            for row in rows
        ]

    async def changes(self, after_revision: int, limit: int) -> list[EventRecord]:
        rows = await self.db.read(lambda tx: tx.fetch(_CHANGES, after_revision, limit))
        return [event_record(self.dialect, row) for row in rows]

    async def idempotency_record(
        self, scope: str, not_before: datetime
    ) -> IdempotencyRecord | None:
        row = await self.db.read_point(
            lambda tx: tx.fetchrow(_IDEMPOTENCY, scope, self.dialect.time(not_before))
        )
        return None if row is None else IdempotencyRecord(row["fingerprint"], bytes(row["outcome"]))

    async def head_revision(self) -> int:
        value = await self.db.read_point(lambda tx: tx.fetchval(_HEAD))
        return int(value or 0)


def _state(dialect: Dialect, row: Row) -> StoredState:
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


_GET_STATE = f"SELECT {STATE_COLUMNS} FROM states WHERE entity_type = $1 AND entity_id = $2"
_HISTORY = (
    "SELECT revision, version, event, previous_status, new_status, metadata, reason, actor, "
    "changed_at FROM state_history WHERE entity_type = $1 AND entity_id = $2 AND revision > $3 "
    "ORDER BY revision LIMIT $4"
)
OUTBOX_COLUMNS = "revision, event_id, event, entity_type, entity_id, data, created_at"
_CHANGES = f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE revision > $1 ORDER BY revision LIMIT $2"
_IDEMPOTENCY = (
    "SELECT fingerprint, outcome FROM idempotency_keys WHERE scope = $1 AND created_at >= $2"
)
_HEAD = "SELECT value FROM revision_counter WHERE id = 1"


def _load_many(dialect: Dialect) -> str:
    return (
        f"SELECT {STATE_COLUMNS} FROM states WHERE entity_type = $1 "
        f"AND entity_id {dialect.in_list('$2')}"
    )


# -- writing a change set ---------------------------------------------------------


class _ChangeWriter:
    async def commit(
        self, changes: ChangeSet, idempotency: IdempotencyWrite | None
    ) -> list[AppliedChange] | None:
        """Write the change set if every target is still at its expected
        version; None when one is not (decide again)."""
        raise NotImplementedError


def _no_hook(_: Sequence[AppliedChange]) -> None:
    pass


class _SqliteChangeWriter(_ChangeWriter):
    def __init__(self, db: Database, hook: CommitHook) -> None:
        self.db = db
        self.hook = hook
        self._last_at = datetime.min.replace(tzinfo=UTC)

    async def commit(
        self, changes: ChangeSet, idempotency: IdempotencyWrite | None
    ) -> list[AppliedChange] | None:
        return await self.db.write(lambda tx: self._write(tx, changes, idempotency))

    async def _write(
        self, tx: Tx, changes: ChangeSet, idempotency: IdempotencyWrite | None
    ) -> list[AppliedChange] | None:
        dialect = tx.dialect
        if idempotency is not None:
            expired = dialect.time(idempotency.expired_before)
            await tx.execute(_DELETE_EXPIRED_KEY, idempotency.scope, expired)
            if await tx.fetchval(_KEY_TAKEN, idempotency.scope):
                raise IdempotencyConflict(idempotency.scope)
        for entity, entity_id, version in changes.expected:
            found = await tx.fetchval(_VERSION, entity, entity_id)
            if (found or 0) != version:
                return None
        last = await tx.fetchval(_BUMP_COUNTER, changes.count)
        assert last is not None, "revision_counter is missing its row; run migrations"
        base = int(last) - changes.count
        # The clock is read under the write lock, so time never runs backwards
        # along revisions (`updatedAfter`, feed timestamps).
        at = max(utc_now(), self._last_at)
        self._last_at = at
        now = dialect.time(at)
        await tx.executemany(_SQLITE_DELETE_STATE, changes.deletes)
        await tx.executemany(
            _SQLITE_UPDATE_STATE,
            [
                (
                    s.entity,
                    s.entity_id,
                    s.status,
                    s.metadata,
                    s.version,
                    base + s.offset,
                    dialect.time(s.created_at) if s.created_at else now,
                    now,
                )
                for s in changes.states
                if not s.is_new
            ],
        )
        await tx.executemany(
            _SQLITE_INSERT_STATE,
            [
                (
                    s.entity,
                    s.entity_id,
                    s.status,
                    s.metadata,
                    s.version,
                    base + s.offset,
                    dialect.time(s.created_at) if s.created_at else now,
                    now,
                )
                for s in changes.states
                if s.is_new
            ],
        )
        await tx.executemany(
            _SQLITE_INSERT_HISTORY,
            [
                (
                    base + h.offset,
                    h.entity,
                    h.entity_id,
                    h.version,
                    h.event,
                    h.previous_status,
                    h.new_status,
                    h.metadata,
                    h.reason,
                    h.actor,
                    now,
                )
                for h in changes.history
            ],
        )
        await tx.executemany(
            _SQLITE_INSERT_EVENT,
            [
                (base + e.offset, e.event_id, e.event, e.entity, e.entity_id, e.data, now)
                for e in changes.events
            ],
        )
        applied = changes.applied(base, at)
        if idempotency is not None:
            await tx.execute(
                _INSERT_KEY,
                idempotency.scope,
                idempotency.fingerprint,
                idempotency.encode(applied),
                now,
            )
        self.hook(applied)
        return applied


class _PostgresChangeWriter(_ChangeWriter):
    def __init__(self, db: PostgresDatabase, hook: CommitHook) -> None:
        self.db = db
        self.hook = hook

    async def commit(
        self, changes: ChangeSet, idempotency: IdempotencyWrite | None
    ) -> list[AppliedChange] | None:
        applied = await self._commit(changes, idempotency)
        if applied is not None:
            self.hook(applied)
        return applied

    async def _commit(
        self, changes: ChangeSet, idempotency: IdempotencyWrite | None
    ) -> list[AppliedChange] | None:
        args = _apply_arguments(changes)
        async with self.db.connection() as connection:
            try:
                if idempotency is None:
                    row = await connection.fetchrow(_PG_APPLY, *args)
                    return None if row is None else changes.applied(row["base"], row["at"])
                async with connection.transaction():
                    await connection.execute(
                        _DELETE_EXPIRED_KEY, idempotency.scope, idempotency.expired_before
                    )
                    row = await connection.fetchrow(_PG_APPLY, *args)
                    if row is None:
                        return None
                    applied = changes.applied(row["base"], row["at"])
                    try:
                        await connection.execute(
                            _INSERT_KEY,
                            idempotency.scope,
                            idempotency.fingerprint,
                            idempotency.encode(applied),
                            row["at"],
                        )
                    except asyncpg.UniqueViolationError:
                        raise IdempotencyConflict(idempotency.scope) from None
                    return applied
            except asyncpg.UniqueViolationError:
                # Two writers created the same entity at once; decide again.
                return None
            except asyncpg.SerializationError:
                return None
            except asyncpg.DeadlockDetectedError:
                return None


def _apply_arguments(changes: ChangeSet) -> list[object]:
    expected = changes.expected
    states = changes.states
    history = changes.history
    events = changes.events
    return [
        changes.count,
        [e[0] for e in expected],
        [e[1] for e in expected],
        [e[2] for e in expected],
        [d[0] for d in changes.deletes],
        [d[1] for d in changes.deletes],
        [s.entity for s in states],
        [s.entity_id for s in states],
        [s.status for s in states],
        [s.metadata for s in states],
        [s.version for s in states],
        [s.offset for s in states],
        [s.created_at for s in states],
        [s.is_new for s in states],
        [h.offset for h in history],
        [h.entity for h in history],
        [h.entity_id for h in history],
        [h.version for h in history],
        [h.event for h in history],
        [h.previous_status for h in history],
        [h.new_status for h in history],
        [h.metadata for h in history],
        [h.reason for h in history],
        [h.actor for h in history],
        [e.offset for e in events],
        [e.event_id for e in events],
        [e.event for e in events],
        [e.entity for e in events],
        [e.entity_id for e in events],
        [e.data for e in events],
    ]


_DELETE_EXPIRED_KEY = "DELETE FROM idempotency_keys WHERE scope = $1 AND created_at < $2"
_KEY_TAKEN = "SELECT 1 FROM idempotency_keys WHERE scope = $1"
_INSERT_KEY = (
    "INSERT INTO idempotency_keys (scope, fingerprint, outcome, created_at) VALUES ($1, $2, $3, $4)"
)
_VERSION = "SELECT version FROM states WHERE entity_type = $1 AND entity_id = $2"
_BUMP_COUNTER = "UPDATE revision_counter SET value = value + $1 WHERE id = 1 RETURNING value"
_SQLITE_DELETE_STATE = "DELETE FROM states WHERE entity_type = $1 AND entity_id = $2"
_SQLITE_UPDATE_STATE = (
    "UPDATE states SET status = $3, metadata = $4, version = $5, revision = $6, created_at = $7, "
    "updated_at = $8 WHERE entity_type = $1 AND entity_id = $2"
)
_SQLITE_INSERT_STATE = (
    f"INSERT INTO states ({STATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
_SQLITE_INSERT_HISTORY = (
    "INSERT INTO state_history (revision, entity_type, entity_id, version, event, "
    "previous_status, new_status, metadata, reason, actor, changed_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_SQLITE_INSERT_EVENT = f"INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"

# One statement, one implicit transaction: see the module docstring. The
# targets' row locks come first (`locked`), the counter's last (`counter` only
# runs once `locked` has been read), so two statements never wait on each
# other in opposite orders. If a version differs, `counter` returns no row and
# nothing below it writes.
_PG_APPLY = f"""
WITH expected AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::int[]) AS e(entity_type, entity_id, version)
), locked AS (
    SELECT s.entity_type, s.entity_id, s.version
    FROM states s JOIN expected e USING (entity_type, entity_id)
    ORDER BY s.entity_type, s.entity_id
    FOR UPDATE OF s
), counter AS (
    UPDATE revision_counter SET value = value + $1
    WHERE id = 1 AND NOT EXISTS (
        SELECT 1 FROM expected e LEFT JOIN locked l USING (entity_type, entity_id)
        WHERE coalesce(l.version, 0) <> e.version
    )
    RETURNING value - $1 AS base, date_trunc('milliseconds', clock_timestamp()) AS at
), gone AS (
    DELETE FROM states s USING counter, unnest($5::text[], $6::text[]) AS d(entity_type, entity_id)
    WHERE s.entity_type = d.entity_type AND s.entity_id = d.entity_id
), written AS (
    SELECT * FROM unnest(
        $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::int[],
        $13::timestamptz[], $14::bool[]
    ) AS w(entity_type, entity_id, status, metadata, version, off, created_at, is_new)
), changed AS (
    UPDATE states s SET status = w.status, metadata = w.metadata::jsonb, version = w.version,
        revision = c.base + w.off, created_at = coalesce(w.created_at, c.at), updated_at = c.at
    FROM counter c, written w
    WHERE NOT w.is_new AND s.entity_type = w.entity_type AND s.entity_id = w.entity_id
), created AS (
    INSERT INTO states ({STATE_COLUMNS})
    SELECT w.entity_type, w.entity_id, w.status, w.metadata::jsonb, w.version, c.base + w.off,
        coalesce(w.created_at, c.at), c.at
    FROM counter c, written w WHERE w.is_new
), history AS (
    INSERT INTO state_history (revision, entity_type, entity_id, version, event,
        previous_status, new_status, metadata, reason, actor, changed_at)
    SELECT c.base + h.off, h.entity_type, h.entity_id, h.version, h.event, h.previous_status,
        h.new_status, h.metadata::jsonb, h.reason, h.actor, c.at
    FROM counter c, unnest(
        $15::int[], $16::text[], $17::text[], $18::int[], $19::text[], $20::text[], $21::text[],
        $22::text[], $23::text[], $24::text[]
    ) AS h(off, entity_type, entity_id, version, event, previous_status, new_status, metadata,
        reason, actor)
), events AS (
    INSERT INTO outbox ({OUTBOX_COLUMNS})
    SELECT c.base + o.off, o.event_id, o.event, o.entity_type, o.entity_id, o.data, c.at
    FROM counter c, unnest(
        $25::int[], $26::text[], $27::text[], $28::text[], $29::text[], $30::text[]
    ) AS o(off, event_id, event, entity_type, entity_id, data)
)
SELECT base, at, pg_notify('{OUTBOX_CHANNEL}', (base + $1)::text) AS notified FROM counter
"""
