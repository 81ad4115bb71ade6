"""The SQL backend of the storage port, for SQLite (embedded) and PostgreSQL.

Each operation is one plain function over a SQLAlchemy `Connection`, run whole:
* on PostgreSQL over asyncpg (`AsyncConnection.run_sync`, no threads);
* on SQLite with the stdlib driver in a thread: every write transaction on one
  dedicated writer thread (`BEGIN IMMEDIATE`), reads on a small reader pool
  (WAL). One thread hop per operation, not one per statement, which is what
  made aiosqlite the bottleneck (bench/REPORT.md).

Writers are serialized so that revisions commit in order: on PostgreSQL by the
row lock of `revision_counter`, taken as late as possible in each transaction;
on SQLite by the single writer thread. Reads never wait for writers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    ColumnElement,
    Row,
    String,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from potok_state.changes.model import (
    AppliedChange,
    CustomEvent,
    Decide,
    EventData,
    EventRecord,
    EventType,
    HistoryRecord,
    IdempotencyRecord,
    IdempotencyWrite,
    StateChange,
    StoredState,
)
from potok_state.clock import as_utc, utc_now
from potok_state.storage.port import (
    IdempotencyConflict,
    SortField,
    StateQuery,
)
from potok_state.storage.tables import (
    idempotency_keys,
    outbox,
    revision_counter,
    state_history,
    states,
)
from potok_state.wakeup import Wakeup

T = TypeVar("T")
OUTBOX_CHANNEL = "potok_outbox"
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
_MAX_ATTEMPTS = 8

_SORT_COLUMNS = {
    SortField.ENTITY_ID: states.c.entity_id,
    SortField.CREATED_AT: states.c.created_at,
    SortField.UPDATED_AT: states.c.revision,
    SortField.STATUS: states.c.status,
    SortField.VERSION: states.c.version,
}


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _sqlite_file(url: str) -> str:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    return str(database)


def _set_pragmas(dbapi_connection: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, pool_size: int, echo: bool = False) -> AsyncEngine:
    """An async engine for DATABASE_URL (asyncpg, or aiosqlite for migrations)."""
    if make_url(url).get_backend_name() == "sqlite":
        _sqlite_file(url)
        engine = create_async_engine(
            url,
            echo=echo,
            pool_size=pool_size,
            max_overflow=0,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _: Any) -> None:
            _set_pragmas(dbapi_connection)

        return engine
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def create_sqlite_engine(url: str, *, pool_size: int, writer: bool) -> Engine:
    """A stdlib-sqlite3 engine for one side: the writer begins every transaction
    with BEGIN IMMEDIATE (the write lock up front, so a read-validate-write can
    not interleave with another process); readers run in autocommit."""
    file = _sqlite_file(url)
    engine = create_sync_engine(
        f"sqlite:///{file}",
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"check_same_thread": False},
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        isolation_level=None if writer else "AUTOCOMMIT",
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        _set_pragmas(dbapi_connection)
        # Transactions are begun explicitly below, not by the driver.
        dbapi_connection.isolation_level = None

    if writer:

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _state_from_row(row: Row[Any]) -> StoredState:
    return StoredState(
        entity=row.entity_type,
        entity_id=row.entity_id,
        status=row.status,
        metadata=row.metadata,
        version=row.version,
        revision=row.revision,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def event_from_row(row: Row[Any]) -> EventRecord:
    """An outbox row (or a row carrying the outbox columns) as an EventRecord."""
    return EventRecord(
        revision=row.revision,
        event_id=row.event_id,
        event=row.event,
        entity=row.entity_type,
        entity_id=row.entity_id,
        data=row.data,
        created_at=as_utc(row.created_at),
    )


class SqlStateStore:
    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        # Set after every committed change; the webhook worker in this process
        # waits on it (other processes are woken by NOTIFY on PostgreSQL).
        self.changes_committed = Wakeup()
        self._async_engine: AsyncEngine | None = None
        if self.is_sqlite:
            readers = max(2, min(pool_size, 8))
            # One more reader connection is kept for point reads on the loop.
            self._write_engine = create_sqlite_engine(url, pool_size=1, writer=True)
            self._loop_connection: Connection | None = None
            self._read_engine = create_sqlite_engine(url, pool_size=readers + 1, writer=False)
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="potok-sqlite-write")
            self._read_threads = ThreadPoolExecutor(readers, thread_name_prefix="potok-sqlite-read")
        else:
            self._async_engine = create_engine(url, pool_size=pool_size)

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction; it commits when `work` returns."""
        if self._async_engine is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._write_thread, self._in_transaction, work)
        async with self._async_engine.begin() as conn:
            return await conn.run_sync(work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a read connection (no transaction is held open)."""
        if self._async_engine is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_threads, self._on_reader, work)
        async with self._async_engine.connect() as conn:
            return await conn.run_sync(work)

    async def read_point(self, work: Callable[[Connection], T]) -> T:
        """A read by primary key. On SQLite it runs on the event loop's own
        connection: such a lookup takes microseconds, less than a thread hop,
        and WAL readers never wait for the writer."""
        if self._async_engine is None:
            if self._loop_connection is None:
                self._loop_connection = self._read_engine.connect()
            return work(self._loop_connection)
        return await self.read(work)

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        with self._write_engine.begin() as conn:
            return work(conn)

    def _on_reader(self, work: Callable[[Connection], T]) -> T:
        with self._read_engine.connect() as conn:
            return work(conn)

    async def close(self) -> None:
        if self._async_engine is not None:
            await self._async_engine.dispose()
            return
        if self._loop_connection is not None:
            self._loop_connection.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_thread, self._write_engine.dispose)
        await loop.run_in_executor(self._read_threads, self._read_engine.dispose)
        self._write_thread.shutdown()
        self._read_threads.shutdown()

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute(text("SELECT 1")).all())

    # -- writes -------------------------------------------------------------------

    async def apply(
        self,
        entity_ids: Sequence[tuple[str, str]],
        decide: Decide,
        event_data: EventData,
        idempotency: IdempotencyWrite | None = None,
    ) -> list[AppliedChange]:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                applied = await self.write(
                    lambda conn: self._apply_once(conn, entity_ids, decide, event_data, idempotency)
                )
                if applied:
                    self.changes_committed.notify()
                return applied
            except IntegrityError:
                # Two transactions created the same entity (or stored the same
                # idempotency key) at once; the retry sees the winner's row.
                if idempotency is not None and await self._idempotency_taken(idempotency.scope):
                    raise IdempotencyConflict(idempotency.scope) from None
                if attempt == _MAX_ATTEMPTS:
                    raise
            except DBAPIError as exc:
                if _sqlstate(exc) not in _RETRYABLE_SQLSTATES or attempt == _MAX_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _apply_once(
        self,
        conn: Connection,
        entity_ids: Sequence[tuple[str, str]],
        decide: Decide,
        event_data: EventData,
        idempotency: IdempotencyWrite | None,
    ) -> list[AppliedChange]:
        current = self._lock_states(conn, entity_ids)
        mutations = decide(current)
        if not mutations:
            return []
        last = conn.scalar(
            update(revision_counter)
            .where(revision_counter.c.id == 1)
            .values(value=revision_counter.c.value + len(mutations))
            .returning(revision_counter.c.value)
        )
        assert last is not None, "revision_counter is missing its row; run migrations"
        # Read the clock only while holding the counter's row lock, so that time
        # never runs backwards along revisions (`updatedAfter`, feed timestamps).
        now = utc_now()
        first = last - len(mutations) + 1

        applied: list[AppliedChange] = []
        final: dict[tuple[str, str], StoredState | None] = {}
        history_rows: list[dict[str, object]] = []
        outbox_rows: list[dict[str, object]] = []
        for revision, mutation in enumerate(mutations, start=first):
            event_id = "evt_" + uuid.uuid4().hex
            state: StoredState | None = None
            if isinstance(mutation, StateChange):
                key = (mutation.entity, mutation.entity_id)
                if mutation.status is not None:
                    # An update keeps the creation time of the state it updates,
                    # also when a batch created that state earlier in this
                    # transaction; a creation is now.
                    earlier = final[key] if key in final else current.get(mutation.entity_id)
                    keep_created = (
                        mutation.event is EventType.UPDATED
                        and earlier is not None
                        and earlier.entity == mutation.entity
                    )
                    state = StoredState(
                        entity=mutation.entity,
                        entity_id=mutation.entity_id,
                        status=mutation.status,
                        metadata=mutation.metadata,
                        version=mutation.version,
                        revision=revision,
                        created_at=earlier.created_at if keep_created and earlier else now,
                        updated_at=now,
                    )
                final[key] = state
                history_rows.append(
                    {
                        "revision": revision,
                        "entity_type": mutation.entity,
                        "entity_id": mutation.entity_id,
                        "version": mutation.version,
                        "event": mutation.event.value,
                        "previous_status": mutation.previous_status,
                        "new_status": mutation.status,
                        "metadata": mutation.metadata,
                        "reason": mutation.reason,
                        "actor": mutation.actor,
                        "changed_at": now,
                    }
                )
                entity: str | None = mutation.entity
                entity_id: str | None = mutation.entity_id
                event_name: str = mutation.event.value
            else:
                assert isinstance(mutation, CustomEvent)
                entity = entity_id = None
                event_name = mutation.event
            outbox_rows.append(
                {
                    "revision": revision,
                    "event_id": event_id,
                    "event": event_name,
                    "entity_type": entity,
                    "entity_id": entity_id,
                    "data": event_data(mutation),
                    "created_at": now,
                }
            )
            applied.append(AppliedChange(mutation, revision, event_id, now, state))
        if not self.is_sqlite:
            conn.execute(select(func.pg_notify(OUTBOX_CHANNEL, str(last))))

        # State rows first, then history, then outbox: a failure anywhere after
        # the state write rolls all of it back.
        self._write_states(conn, current, final)
        if history_rows:
            conn.execute(insert(state_history), history_rows)
        conn.execute(insert(outbox), outbox_rows)
        if idempotency is not None:
            conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.scope == idempotency.scope,
                    idempotency_keys.c.created_at < idempotency.expired_before,
                )
            )
            conn.execute(
                insert(idempotency_keys).values(
                    scope=idempotency.scope,
                    fingerprint=idempotency.fingerprint,
                    outcome=idempotency.encode(applied),
                    created_at=now,
                )
            )
        return applied

    def _lock_states(
        self, conn: Connection, entity_ids: Sequence[tuple[str, str]]
    ) -> dict[str, StoredState]:
        if not entity_ids:
            return {}
        by_type: dict[str, list[str]] = {}
        for entity, entity_id in entity_ids:
            by_type.setdefault(entity, []).append(entity_id)
        condition = or_(
            *(
                and_(states.c.entity_type == entity, states.c.entity_id.in_(ids))
                for entity, ids in by_type.items()
            )
        )
        query = select(states).where(condition).order_by(states.c.entity_type, states.c.entity_id)
        if not self.is_sqlite:
            query = query.with_for_update()
        rows = conn.execute(query).all()
        return {row.entity_id: _state_from_row(row) for row in rows}

    def _write_states(
        self,
        conn: Connection,
        before: Mapping[str, StoredState],
        after: Mapping[tuple[str, str], StoredState | None],
    ) -> None:
        inserts: list[dict[str, object]] = []
        updates: list[dict[str, object]] = []
        deletes: list[dict[str, object]] = []
        for (entity, entity_id), state in after.items():
            existed = entity_id in before and before[entity_id].entity == entity
            if state is None:
                if existed:
                    deletes.append({"b_type": entity, "b_id": entity_id})
            elif existed:
                updates.append(
                    {
                        "b_type": entity,
                        "b_id": entity_id,
                        "status": state.status,
                        "metadata": state.metadata,
                        "version": state.version,
                        "revision": state.revision,
                        "created_at": state.created_at,
                        "updated_at": state.updated_at,
                    }
                )
            else:
                inserts.append(
                    {
                        "entity_type": entity,
                        "entity_id": entity_id,
                        "status": state.status,
                        "metadata": state.metadata,
                        "version": state.version,
                        "revision": state.revision,
                        "created_at": state.created_at,
                        "updated_at": state.updated_at,
                    }
                )
        match_row = and_(
            states.c.entity_type == bindparam("b_type"), states.c.entity_id == bindparam("b_id")
        )
        if deletes:
            conn.execute(delete(states).where(match_row), deletes)
        if updates:
            conn.execute(update(states).where(match_row), updates)
        if inserts:
            conn.execute(insert(states), inserts)

    async def _idempotency_taken(self, scope: str) -> bool:
        statement = select(func.count()).where(idempotency_keys.c.scope == scope)
        return bool(await self.read(lambda conn: conn.scalar(statement)))

    # -- reads --------------------------------------------------------------------

    async def get_state(self, entity: str, entity_id: str) -> StoredState | None:
        statement = select(states).where(
            states.c.entity_type == entity, states.c.entity_id == entity_id
        )
        row = await self.read_point(lambda conn: conn.execute(statement).first())
        return None if row is None else _state_from_row(row)

    async def query_states(self, query: StateQuery) -> list[StoredState]:
        sort_column = _SORT_COLUMNS[query.sort]
        conditions: list[ColumnElement[bool]] = [states.c.entity_type == query.entity]
        if query.statuses:
            conditions.append(states.c.status.in_(query.statuses))
        for key, candidates in query.metadata_equals.items():
            conditions.append(self._metadata_text(key).in_(candidates))
        if query.updated_after is not None:
            conditions.append(states.c.updated_at > query.updated_after)
        if query.updated_before is not None:
            conditions.append(states.c.updated_at < query.updated_before)
        if query.after_key is not None:
            position = tuple_(sort_column, states.c.entity_id)
            bound = tuple_(*query.after_key)
            conditions.append(position < bound if query.descending else position > bound)
        order = (
            (sort_column.desc(), states.c.entity_id.desc())
            if query.descending
            else (sort_column.asc(), states.c.entity_id.asc())
        )
        statement = select(states).where(*conditions).order_by(*order).limit(query.limit)
        rows = await self.read(lambda conn: conn.execute(statement).all())
        return [_state_from_row(row) for row in rows]

    def _metadata_text(self, key: str) -> ColumnElement[str]:
        """The JSON text of one top-level metadata value (`"high"`, `5`, `true`)."""
        if self.is_sqlite:
            return states.c.metadata.op("->", return_type=Text)(literal(f'$."{key}"', String))
        return cast(states.c.metadata.op("->", return_type=JSONB)(literal(key, String)), Text)

    async def history(
        self, entity: str, entity_id: str, after_revision: int, limit: int
    ) -> list[HistoryRecord]:
        statement = (
            select(state_history)
            .where(
                state_history.c.entity_type == entity,
                state_history.c.entity_id == entity_id,
                state_history.c.revision > after_revision,
            )
            .order_by(state_history.c.revision)
            .limit(limit)
        )
        rows = await self.read(lambda conn: conn.execute(statement).all())
        return [
            HistoryRecord(
                revision=row.revision,
                entity=row.entity_type,
                entity_id=row.entity_id,
                version=row.version,
                event=row.event,
                previous_status=row.previous_status,
                new_status=row.new_status,
                metadata=row.metadata,
                reason=row.reason,
                actor=row.actor,
                changed_at=as_utc(row.changed_at),
            )
            for row in rows
        ]

    async def changes(self, after_revision: int, limit: int) -> list[EventRecord]:
        statement = (
            select(outbox)
            .where(outbox.c.revision > after_revision)
            .order_by(outbox.c.revision)
            .limit(limit)
        )
        rows = await self.read(lambda conn: conn.execute(statement).all())
        return [event_from_row(row) for row in rows]

    async def idempotency_record(
        self, scope: str, not_before: datetime
    ) -> IdempotencyRecord | None:
        statement = select(idempotency_keys.c.fingerprint, idempotency_keys.c.outcome).where(
            idempotency_keys.c.scope == scope, idempotency_keys.c.created_at >= not_before
        )
        row = await self.read(lambda conn: conn.execute(statement).first())
        return None if row is None else IdempotencyRecord(row.fingerprint, bytes(row.outcome))


def _sqlstate(exc: DBAPIError) -> str | None:
    original = exc.orig
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
