"""The SQL backend of the storage port, for SQLite (embedded) and PostgreSQL,
on the raw drivers (stdlib sqlite3, asyncpg); SQLAlchemy describes the schema
for Alembic only.

Applying a change (docs/architecture.md, "The write path")
    1. Read the current states of the targets, without locks.
    2. Decide (the service's pure function) on what was read.
    3. Write the `ChangeSet` with a guard: every target must still be at the
       version the decision saw. If one is not, nothing is written and the
       change is decided again on fresh states. Both databases write change
       sets in groups, one commit for many (`writers.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta

import orjson

from potok_state.changes.model import (
    AppliedChange,
    Decide,
    EventData,
    EventRecord,
    HistoryRecord,
    StoredState,
)
from potok_state.clock import utc_now
from potok_state.storage.changeset import Decision
from potok_state.storage.commits import CommitFeed
from potok_state.storage.database import (
    Database,
    PostgresDatabase,
    Row,
    SqliteDatabase,
    Tx,
    open_database,
)
from potok_state.storage.dialect import Dialect
from potok_state.storage.idempotency import (
    IdempotencyRecord,
    IdempotencyWrite,
    ResultT,
    find_record,
    remember,
)
from potok_state.storage.port import (
    ChangeAnswer,
    DueLeases,
    HistoryHorizon,
    ListedPage,
    ListedState,
    PastState,
    Renewal,
    RevisionBounds,
    SortField,
    StateQuery,
    StatusCount,
    WriteTicket,
)
from potok_state.storage.rows import (
    OUTBOX_COLUMNS,
    StateReads,
    event_record,
    load_states,
)
from potok_state.storage.writers import CommitHook, change_writer

_SORT_COLUMNS = {
    SortField.ENTITY_ID: "entity_id",
    SortField.CREATED_AT: "created_at",
    SortField.UPDATED_AT: "revision",
    SortField.STATUS: "status",
    SortField.VERSION: "version",
}


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
        self._writer = change_writer(self.db, commit_hook)
        self._reads = StateReads(self.db)
        self._heartbeats = _Heartbeats(self.db)
        self.admission: Callable[[], AbstractContextManager[WriteTicket]] | None = None
        """Held around every change; raises to refuse it (the external
        backend's backlog limit, docs/external.md)."""

    @property
    def is_sqlite(self) -> bool:
        return isinstance(self.db, SqliteDatabase)

    async def close(self) -> None:
        await self._writer.close()
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
        idempotency: ChangeAnswer | None = None,
        hint: Mapping[str, StoredState | None] | None = None,
    ) -> list[AppliedChange]:
        if self.admission is None:
            return await self._apply(entity_ids, decide, event_data, idempotency, hint)
        with self.admission() as ticket:
            changes = await self._apply(entity_ids, decide, event_data, idempotency, hint)
            ticket.revision = max((change.revision for change in changes), default=0)
            return changes

    async def _apply(
        self,
        entity_ids: Sequence[tuple[str, str]],
        decide: Decide,
        event_data: EventData,
        idempotency: ChangeAnswer | None,
        hint: Mapping[str, StoredState | None] | None,
    ) -> list[AppliedChange]:
        # A turn for the loop first: answers of changes already committed
        # (callbacks from the SQLite writer) are delivered before this one is
        # decided, and a client cannot spin on a path that never awaits (a
        # near-cache read followed by a refused write).
        await asyncio.sleep(0)
        decision = Decision(entity_ids, decide, event_data)
        guessed = hint is not None and any(entity_id in hint for _, entity_id in entity_ids)
        current = await self._current(entity_ids, hint)
        try:
            changes = decision.changes(current)
        except Exception:
            if not guessed:
                raise
            # Refused on states only believed current (a cache, an assumption):
            # decide again on what the database holds.
            current = await self._current(entity_ids, None)
            changes = decision.changes(current)
        if changes is None:
            return []
        applied = await self._writer.write(decision, changes, idempotency)
        if applied:
            self.commits.local()
        return applied

    async def _current(
        self,
        entity_ids: Sequence[tuple[str, str]],
        hint: Mapping[str, StoredState | None] | None,
    ) -> dict[str, StoredState]:
        """The targets' states: those in `hint` as given (None: believed
        absent), the others read from the database."""
        known: dict[str, StoredState] = {}
        missing = list(entity_ids)
        if hint is not None:
            missing = [target for target in entity_ids if target[1] not in hint]
            known = {entity_id: state for entity_id, state in hint.items() if state is not None}
        if not missing:
            return known
        if len(missing) == 1:
            entity, entity_id = missing[0]
            state = await self._reads.get(entity, entity_id)
            read = {} if state is None else {entity_id: state}
        else:
            read = await self.db.read(lambda tx: load_states(tx, missing))
        return {**known, **read}

    # -- reads --------------------------------------------------------------------

    async def get_state(self, entity: str, entity_id: str) -> StoredState | None:
        return await self._reads.get(entity, entity_id)

    async def query_states(self, query: StateQuery) -> ListedPage:
        dialect = self.dialect
        args: list[object] = [query.entity]
        conditions = ["entity_type = $1"]

        def param(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if len(set(query.statuses)) == 1:
            conditions.append(f"status = {param(query.statuses[0])}")
        elif query.statuses:
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
        # Revisions are unique (every change has its own), so sorting by them
        # needs no tie-break: the page is read straight along the index on
        # (entity_type, revision), with no sort after it.
        unique = query.sort is SortField.UPDATED_AT
        operator = "<" if query.descending else ">"
        if query.after_key is not None:
            value, after_id = query.after_key
            bound = dialect.time(value) if isinstance(value, datetime) else value
            if unique:
                conditions.append(f"{column} {operator} {param(bound)}")
            else:
                conditions.append(
                    f"({column}, entity_id) {operator} ({param(bound)}, {param(after_id)})"
                )
        direction = "DESC" if query.descending else "ASC"
        order = f"ORDER BY {column} {direction}"
        if not unique:
            order += f", entity_id {direction}"
        columns = (
            f"entity_type, entity_id, status, {dialect.json_text('metadata')}, version, "
            f"revision, {dialect.api_time('created_at')}, {dialect.api_time('updated_at')}, "
            f"lease_ttl, {dialect.api_time('lease_expires_at')}"
        )
        sql = dialect.page_with_head(columns, " AND ".join(conditions), order, param(query.limit))
        # On SQLite on the loop's own connection: a page takes ~100 µs to read,
        # less than the thread hop and the lock contention of a reader thread
        # (list throughput doubled).
        rows = await self.db.read_point(lambda tx: tx.fetch(sql, *args))
        return ListedPage(
            [ListedState._make(row[:10]) for row in rows if row[0] is not None],
            int(rows[0][10]) if rows else 0,
        )

    async def history(
        self, entity: str, entity_id: str, after_revision: int, limit: int
    ) -> list[HistoryRecord]:
        rows = await self.db.read(
            lambda tx: tx.fetch(_HISTORY, entity, entity_id, after_revision, limit)
        )
        return [self._history_record(entity, entity_id, row) for row in rows]

    async def history_at(self, entity: str, entity_id: str, point: int | datetime) -> PastState:
        """One indexed lookup in the common case (a row at or before the point;
        a time is first turned into the revision committed last by then, with
        the outbox's time index while it still holds that time); the other
        reads only when the entity has no row there."""
        dialect = self.dialect
        if isinstance(point, datetime):
            when = dialect.time(point)
            resolved = await self.db.read_point(lambda tx: tx.fetchval(_REVISION_AT_TIME, when))
            if resolved is not None:
                point = int(resolved)
        by_revision = isinstance(point, int)
        bound = point if isinstance(point, int) else dialect.time(point)
        at_sql, after_sql = (
            (_HISTORY_AT_REVISION, _NEXT_AFTER_REVISION)
            if by_revision
            else (_HISTORY_AT_TIME, _NEXT_AFTER_TIME)
        )
        row = await self.db.read_point(lambda tx: tx.fetchrow(at_sql, entity, entity_id, bound))
        assert row is not None, "revision_counter is missing its row; run migrations"
        head = int(row["head"])
        if row["revision"] is not None:
            created = row["created_at"]
            return PastState(
                head,
                self._history_record(entity, entity_id, row),
                None if created is None else dialect.read_time(created),
            )

        async def around(tx: Tx) -> tuple[object, Row | None]:
            following = await tx.fetchval(after_sql, entity, entity_id, bound)
            return following, await tx.fetchrow(_HORIZON)

        following, horizon = await self.db.read(around)
        return PastState(
            head,
            None,
            next_event=None if following is None else str(following),
            current=await self._reads.get(entity, entity_id),
            horizon=None
            if horizon is None
            else HistoryHorizon(int(horizon["revision"]), dialect.read_time(horizon["changed_at"])),
        )

    def _history_record(self, entity: str, entity_id: str, row: Row) -> HistoryRecord:
        return HistoryRecord(
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
            changed_at=self.dialect.read_time(row["changed_at"]),
        )

    async def changes(self, after_revision: int, limit: int) -> list[EventRecord]:
        rows = await self.db.read(lambda tx: tx.fetch(_CHANGES, after_revision, limit))
        return [event_record(self.dialect, row) for row in rows]

    async def recent_changes(self, after_revision: int, limit: int) -> list[EventRecord]:
        # On SQLite on the event loop's own connection: the rows just committed are
        # in the page cache, and a thread hop per read cost more than the read.
        rows = await self.db.read_point(lambda tx: tx.fetch(_CHANGES, after_revision, limit))
        return [event_record(self.dialect, row) for row in rows]

    async def idempotency_record(
        self, scope: str, not_before: datetime
    ) -> IdempotencyRecord | None:
        return await find_record(self.db, scope, not_before)

    async def remember(self, write: IdempotencyWrite[ResultT], result: ResultT) -> None:
        """Keep the answer to a request that changed nothing here (a webhook
        ping) for its Idempotency-Key."""
        await remember(self.db, write, result)

    async def head_revision(self) -> int:
        value = await self.db.read_point(lambda tx: tx.fetchval(_HEAD))
        return int(value or 0)

    async def status_counts(self, entity: str | None = None) -> list[StatusCount]:
        if entity is None:
            rows = await self.db.read(lambda tx: tx.fetch(_STATUS_COUNTS))
        else:
            rows = await self.db.read(lambda tx: tx.fetch(_STATUS_COUNTS_OF_TYPE, entity))
        return [StatusCount(row[0], row[1], int(row[2])) for row in rows]

    async def change_counts(self, since: datetime) -> dict[str, int]:
        rows = await self.db.read(lambda tx: tx.fetch(_CHANGE_COUNTS, self.dialect.time(since)))
        return {row[0]: int(row[1]) for row in rows}

    # -- leases (docs/leases.md) ---------------------------------------------------

    async def renew_leases(
        self, entity: str, entity_ids: Sequence[str], ttl: int | None
    ) -> list[Renewal]:
        if self.is_sqlite:
            return await self.db.write(lambda tx: _renew_on_sqlite(tx, entity, entity_ids, ttl))
        if len(entity_ids) == 1:
            return [await self._heartbeats.renew(entity, entity_ids[0], ttl)]
        return await _renew_on_postgres(self.db, entity, entity_ids, ttl)

    async def due_leases(self, limit: int) -> DueLeases:
        if self.is_sqlite:
            now = utc_now()
            rows = await self.db.read_point(
                lambda tx: tx.fetch(_DUE_SQLITE, self.dialect.time(now), limit)
            )
        else:
            rows = await self.db.read_point(lambda tx: tx.fetch(_DUE_POSTGRES, limit))
            now = rows[0]["now"] if rows else utc_now()
        return DueLeases(now, [(row["entity_type"], row["entity_id"]) for row in rows])

    async def drop_leases(
        self, entity: str, versions: Sequence[tuple[str, int]], lapsed_by: datetime
    ) -> None:
        if not versions:
            return
        when = self.dialect.time(lapsed_by)

        async def drop(tx: Tx) -> None:
            await tx.executemany(
                _DROP_LEASE, [(entity, entity_id, version, when) for entity_id, version in versions]
            )

        await self.db.write(drop)

    async def revision_bounds(self) -> RevisionBounds:
        row = await self.db.read_point(lambda tx: tx.fetchrow(_BOUNDS))
        assert row is not None
        return RevisionBounds(oldest=row[0], head=int(row[1] or 0))


_HISTORY = (
    "SELECT revision, version, event, previous_status, new_status, metadata, reason, actor, "
    "changed_at FROM state_history WHERE entity_type = $1 AND entity_id = $2 AND revision > $3 "
    "ORDER BY revision LIMIT $4"
)
_CHANGES = f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE revision > $1 ORDER BY revision LIMIT $2"
# Reads as of a point (docs/data-model.md, "Reads as of a revision or a time").
# The newest revision committed by a time, from the outbox's time index: the
# events are a prefix-pruned log, so while one at or before the time is kept,
# the newest such one is too.
_REVISION_AT_TIME = (
    "SELECT revision FROM outbox WHERE created_at <= $1 "
    "ORDER BY created_at DESC, revision DESC LIMIT 1"
)
# The entity's newest row at or before the point, with the head in the same
# snapshot (one row of NULLs beside the head when there is none).
_HISTORY_AT = (
    "SELECT head.value AS head, h.revision, h.version, h.event, h.previous_status, "
    "h.new_status, h.metadata, h.reason, h.actor, h.changed_at, h.created_at "
    "FROM revision_counter AS head LEFT JOIN (SELECT * FROM state_history "
    "WHERE entity_type = $1 AND entity_id = $2 AND {column} <= $3 "
    "ORDER BY revision DESC LIMIT 1) AS h ON 1 = 1 WHERE head.id = 1"
)
_HISTORY_AT_REVISION = _HISTORY_AT.format(column="revision")
# Older than every kept event: the entity's own rows, newest first, are walked
# back to the time.
_HISTORY_AT_TIME = _HISTORY_AT.format(column="changed_at")
_NEXT_AFTER = (
    "SELECT event FROM state_history WHERE entity_type = $1 AND entity_id = $2 "
    "AND {column} > $3 ORDER BY revision LIMIT 1"
)
_NEXT_AFTER_REVISION = _NEXT_AFTER.format(column="revision")
_NEXT_AFTER_TIME = _NEXT_AFTER.format(column="changed_at")
_HORIZON = "SELECT revision, changed_at FROM history_horizon WHERE id = 1"
_HEAD = "SELECT value FROM revision_counter WHERE id = 1"
# Both walk ix_states_type_status (an index-only count on PostgreSQL once the
# table is vacuumed); the operator console asks, never the hot path.
_STATUS_COUNTS = (
    "SELECT entity_type, status, count(*) FROM states "
    "GROUP BY entity_type, status ORDER BY entity_type, status"
)
_STATUS_COUNTS_OF_TYPE = (
    "SELECT entity_type, status, count(*) FROM states WHERE entity_type = $1 "
    "GROUP BY entity_type, status ORDER BY status"
)
_CHANGE_COUNTS = (
    "SELECT entity_type, count(*) FROM outbox WHERE created_at >= $1 "
    "AND entity_type IS NOT NULL GROUP BY entity_type"
)
# One statement for a batch of heartbeats (each id once; a lapsed or absent
# state is left out). Times are the database's clock, as for every write. The
# deadline is compared through coalesce() on purpose: a bare
# `lease_expires_at > …` lets the planner scan the whole partial index of
# leases (ix_states_lease_due) instead of looking the ids up by primary key,
# O(leased states) per batch.
_RENEW = """
UPDATE states SET lease_ttl = coalesce($3, lease_ttl),
    lease_expires_at = date_trunc('milliseconds', clock_timestamp())
        + make_interval(secs => coalesce($3, lease_ttl))
WHERE entity_type = $1 AND entity_id = ANY($2::text[])
    AND coalesce(lease_expires_at, '-infinity') > clock_timestamp()
RETURNING entity_id, lease_ttl, lease_expires_at
"""
_EXISTING = "SELECT entity_id FROM states WHERE entity_type = $1 AND entity_id = ANY($2::text[])"
# The time is taken once (an InitPlan): compared with the volatile
# clock_timestamp() itself, PostgreSQL walked the whole lease index and
# filtered every row, on every look.
_DUE_POSTGRES = """
WITH t AS (SELECT clock_timestamp() AS now)
SELECT s.entity_type, s.entity_id, (SELECT now FROM t) AS now FROM states s
WHERE s.lease_expires_at <= (SELECT now FROM t) ORDER BY s.lease_expires_at LIMIT $1
"""
_DUE_SQLITE = (
    "SELECT entity_type, entity_id FROM states WHERE lease_expires_at <= $1 "
    "ORDER BY lease_expires_at LIMIT $2"
)
_DROP_LEASE = (
    "UPDATE states SET lease_ttl = NULL, lease_expires_at = NULL "
    "WHERE entity_type = $1 AND entity_id = $2 AND version = $3 AND lease_expires_at <= $4"
)
_LEASES_SQLITE = (
    "SELECT entity_id, lease_ttl, lease_expires_at FROM states "
    "WHERE entity_type = $1 AND entity_id IN (SELECT value FROM json_each($2))"
)
_SET_LEASE_SQLITE = (
    "UPDATE states SET lease_ttl = $3, lease_expires_at = $4 "
    "WHERE entity_type = $1 AND entity_id = $2"
)


async def _renew_on_sqlite(
    tx: Tx, entity: str, entity_ids: Sequence[str], ttl: int | None
) -> list[Renewal]:
    """A unit of the writer thread: read, decide and write under the write lock."""
    dialect = tx.dialect
    now = utc_now()
    rows = await tx.fetch(_LEASES_SQLITE, entity, orjson.dumps(list(entity_ids)).decode())
    held = {row["entity_id"]: row for row in rows}
    renewals: list[Renewal] = []
    updates: list[tuple[object, ...]] = []
    for entity_id in entity_ids:
        row = held.get(entity_id)
        if row is None:
            renewals.append(Renewal(entity_id, found=False))
            continue
        expires = row["lease_expires_at"]
        if expires is None or dialect.read_time(expires) <= now:
            renewals.append(Renewal(entity_id, found=True))
            continue
        length = ttl or row["lease_ttl"]
        until = now + timedelta(seconds=length)
        updates.append((entity, entity_id, length, dialect.time(until)))
        renewals.append(Renewal(entity_id, True, length, until))
    await tx.executemany(_SET_LEASE_SQLITE, updates)
    return renewals


async def _renew_on_postgres(
    db: Database, entity: str, entity_ids: Sequence[str], ttl: int | None
) -> list[Renewal]:
    """The renewal, committed on its own (no explicit transaction); whether the
    states that did not renew exist is asked only when some did not."""
    ids = list(dict.fromkeys(entity_ids))
    rows = await db.read(lambda tx: tx.fetch(_RENEW, entity, ids, ttl))
    read_time = db.dialect.read_time
    renewed = {
        row["entity_id"]: Renewal(
            row["entity_id"], True, row["lease_ttl"], read_time(row["lease_expires_at"])
        )
        for row in rows
    }
    missing = [entity_id for entity_id in ids if entity_id not in renewed]
    existing: set[str] = set()
    if missing:
        found = await db.read_point(lambda tx: tx.fetch(_EXISTING, entity, missing))
        existing = {row["entity_id"] for row in found}
    return [
        renewed.get(entity_id) or Renewal(entity_id, entity_id in existing)
        for entity_id in entity_ids
    ]


class _Heartbeats:
    """Single heartbeats on PostgreSQL, gathered like change sets: those asked
    for while the event loop runs one round are renewed by one statement per
    entity type and ttl (one round trip and one commit for all of them instead
    of one each; the server's CPU per heartbeat is what bounds the rate)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: dict[tuple[str, int | None], dict[str, list[asyncio.Future[Renewal]]]] = {}
        self._flush: asyncio.Handle | None = None
        self._renewing: set[asyncio.Task[None]] = set()

    async def renew(self, entity: str, entity_id: str, ttl: int | None) -> Renewal:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Renewal] = loop.create_future()
        self._waiting.setdefault((entity, ttl), {}).setdefault(entity_id, []).append(future)
        if self._flush is None:
            self._flush = loop.call_soon(self._renew_waiting)
        return await future

    def _renew_waiting(self) -> None:
        waiting, self._waiting, self._flush = self._waiting, {}, None
        for (entity, ttl), by_id in waiting.items():
            task = asyncio.get_running_loop().create_task(self._renew(entity, ttl, by_id))
            self._renewing.add(task)
            task.add_done_callback(self._renewing.discard)

    async def _renew(
        self,
        entity: str,
        ttl: int | None,
        by_id: dict[str, list[asyncio.Future[Renewal]]],
    ) -> None:
        try:
            renewals = await _renew_on_postgres(self.db, entity, list(by_id), ttl)
        except Exception as exc:
            for futures in by_id.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for renewal in renewals:
            for future in by_id.get(renewal.entity_id, []):
                if not future.done():
                    future.set_result(renewal)


_BOUNDS = f"SELECT (SELECT min(revision) FROM outbox), ({_HEAD})"
