"""Connections to the SQL database, SQLite or PostgreSQL, behind one small
interface: a unit of work is an async function over a `Tx`, run either in one
transaction (`write`) or on a read connection (`read`).

PostgreSQL runs units over an asyncpg pool, with asyncpg's prepared-statement
cache. SQLite runs them on the stdlib driver in threads, without awaiting
anything real: a SQLite `Tx` answers every call at once, so the unit's
coroutine runs to its end in one `send` (`run_now`). One implementation of each
unit of work therefore serves both databases.

SQLite writes: group commit (docs/architecture.md)
    Every write unit goes to one writer thread. The thread takes every unit
    queued at that moment, opens one `BEGIN IMMEDIATE` transaction (the
    database's write lock, also across processes), runs each unit inside its own
    SAVEPOINT and commits once. A unit that fails is rolled back to its
    savepoint and fails alone; the others commit. One commit (one fsync with
    SQLITE_SYNCHRONOUS=full) answers the whole group. While another process
    (`serve --workers N`) holds the write lock, the thread polls for it every
    50 µs to 2 ms (`begin_write`) rather than through SQLite's busy handler,
    which sleeps 1, 2, 5, 10… ms and so hands the lock over late.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from potok_state.storage.dialect import POSTGRES, SQLITE, Dialect

T = TypeVar("T")

MAX_GROUP = 512
BUSY_TIMEOUT_MS = 10_000
WRITE_LOCK_POLL_SECONDS = (0.00005, 0.002)
"""The first and the longest pause between tries for the write lock."""


class Row(Protocol):
    """A result row: by column name, position or slice (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: int | str | slice, /) -> Any: ...


class Tx(Protocol):
    """The statements a unit of work may run; SQL in PostgreSQL style ($1…)."""

    dialect: Dialect

    async def fetch(self, sql: str, *args: object) -> Sequence[Row]: ...

    async def fetchrow(self, sql: str, *args: object) -> Row | None: ...

    async def fetchval(self, sql: str, *args: object) -> Any: ...

    async def execute(self, sql: str, *args: object) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...


Work = Callable[[Tx], Coroutine[Any, Any, T]]
LocalSettings = tuple[tuple[str, str], ...]
"""(setting, value) pairs for one PostgreSQL transaction, e.g. (("enable_sort", "off"),)."""


class Database(Protocol):
    dialect: Dialect

    async def write(self, work: Work[T], *, settings: LocalSettings = ()) -> T:
        """Run `work` in one transaction: all of it commits, or none of it.
        `settings`: PostgreSQL settings for this transaction only (`SET LOCAL`,
        sent with its BEGIN); SQLite has none."""
        ...

    async def read(self, work: Work[T]) -> T:
        """Run `work` on a read connection, outside any write transaction."""
        ...

    async def read_point(self, work: Work[T]) -> T:
        """A read of a few rows by key: on SQLite, on the event loop's own
        connection (a primary-key lookup costs less than a thread hop)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a unit of work that never suspends (every SQLite `Tx` call answers
    at once) to its end, synchronously."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a SQLite unit of work awaited something that is not the database")


def open_database(url: str, *, pool_size: int, synchronous: str = "full") -> Database:
    """The database of DATABASE_URL (`sqlite…` or `postgresql…`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteDatabase(
            sqlite_path(url), readers=max(2, min(pool_size, 8)), synchronous=synchronous
        )
    return PostgresDatabase(postgres_dsn(url), pool_size=pool_size)


def sqlite_path(url: str) -> str:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ValueError("SQLite needs a database file (an in-memory database is not shared)")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    return database


def postgres_dsn(url: str) -> str:
    """A libpq DSN (asyncpg's form) for a SQLAlchemy-style PostgreSQL URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# -- SQLite ---------------------------------------------------------------------------


class SqliteTx:
    dialect: Dialect = SQLITE

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def fetch(self, sql: str, *args: object) -> Sequence[Row]:
        rows: list[Row] = self.connection.execute(SQLITE.sql(sql), args).fetchall()
        return rows

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        row: Row | None = self.connection.execute(SQLITE.sql(sql), args).fetchone()
        return row

    async def fetchval(self, sql: str, *args: object) -> Any:
        row = self.connection.execute(SQLITE.sql(sql), args).fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: object) -> int:
        return self.connection.execute(SQLITE.sql(sql), args).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            self.connection.executemany(SQLITE.sql(sql), rows)


def connect_sqlite(
    path: str, *, synchronous: str = "full", busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    connection = sqlite3.connect(
        path,
        timeout=busy_timeout_ms / 1000,
        isolation_level=None,  # transactions are begun explicitly
        check_same_thread=False,
        cached_statements=512,
    )
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


def begin_write(connection: sqlite3.Connection, *, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """`BEGIN IMMEDIATE` on a connection without a busy timeout, tried again
    after a short pause while another process holds the write lock, for up to
    `timeout_ms`. In WAL mode nothing after it waits for a lock: the write lock
    is the only one a write transaction takes."""
    first, longest = WRITE_LOCK_POLL_SECONDS
    pause = first
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, longest)


@dataclass(slots=True)
class _Job:
    work: Work[Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class SqliteWriter:
    """The one writer thread of a SQLite database, committing in groups."""

    def __init__(self, path: str, *, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="potok-sqlite-writer", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    async def submit(self, work: Work[T]) -> T:
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, future, loop))
        # A cancelled caller cancels only its wait: the unit is queued and will
        # still commit (its answer is dropped).
        return await future

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        connection = connect_sqlite(self.path, synchronous=self.synchronous, busy_timeout_ms=0)
        tx = SqliteTx(connection)
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                group: list[_Job] = [first]  # type: ignore[list-item]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    assert isinstance(item, _Job)
                    group.append(item)
                self._commit_group(connection, tx, group)
                if stop:
                    return
        finally:
            connection.close()

    def _commit_group(
        self, connection: sqlite3.Connection, tx: SqliteTx, group: list[_Job]
    ) -> None:
        outcomes: list[tuple[_Job, bool, Any]] = []
        try:
            begin_write(connection)
        except sqlite3.Error as exc:
            _resolve_all([(job, False, exc) for job in group])
            return
        alone = len(group) == 1
        for job in group:
            if not alone:
                connection.execute("SAVEPOINT unit")
            try:
                result = run_now(job.work(tx))
            except Exception as exc:
                if not connection.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O
                    # error): nothing of this group is written.
                    _resolve_all(
                        [(done, False, exc) for done, _, _ in outcomes]
                        + [(j, False, exc) for j in group[len(outcomes) :]]
                    )
                    return
                if alone:
                    connection.execute("ROLLBACK")
                    _resolve_all([(job, False, exc)])
                    return
                connection.execute("ROLLBACK TO unit")
                connection.execute("RELEASE unit")
                outcomes.append((job, False, exc))
                continue
            if not alone:
                connection.execute("RELEASE unit")
            outcomes.append((job, True, result))
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            outcomes = [(job, False, exc) for job, _, _ in outcomes]
        _resolve_all(outcomes)


def _resolve_all(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, items in by_loop.items():
        # A closed loop: nobody waits for these answers any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_on_loop, items)


def _resolve_on_loop(items: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in items:
        if job.future.done():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


class SqliteDatabase:
    """An embedded SQLite file in WAL mode: one writer thread committing in
    groups, a few reader threads, and one connection for point reads on the
    event loop (WAL readers never wait for the writer)."""

    dialect: Dialect = SQLITE

    def __init__(self, path: str, *, readers: int = 4, synchronous: str = "full") -> None:
        self.path = path
        self.writer = SqliteWriter(path, synchronous=synchronous)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="potok-sqlite-read")
        self._loop_tx: SqliteTx | None = None

    def _reader_tx(self) -> SqliteTx:
        tx: SqliteTx | None = getattr(self._local, "tx", None)
        if tx is None:
            connection = connect_sqlite(self.path)
            with self._connections_lock:
                self._connections.append(connection)
            tx = SqliteTx(connection)
            self._local.tx = tx
        return tx

    async def write(self, work: Work[T], *, settings: LocalSettings = ()) -> T:
        return await self.writer.submit(work)

    async def read(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: run_now(work(self._reader_tx())))

    async def read_point(self, work: Work[T]) -> T:
        if self._loop_tx is None:
            connection = connect_sqlite(self.path)
            with self._connections_lock:
                self._connections.append(connection)
            self._loop_tx = SqliteTx(connection)
        return run_now(work(self._loop_tx))

    async def ping(self) -> None:
        await self.read(lambda tx: tx.fetchval("SELECT 1"))

    async def close(self) -> None:
        await asyncio.to_thread(self.writer.stop)
        self._readers.shutdown(wait=True)
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._loop_tx = None


# -- PostgreSQL -----------------------------------------------------------------------


class PostgresTx:
    dialect: Dialect = POSTGRES

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def fetch(self, sql: str, *args: object) -> Sequence[Row]:
        rows: list[Row] = await self.connection.fetch(sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await self.connection.fetchrow(sql, *args)
        return row

    async def fetchval(self, sql: str, *args: object) -> Any:
        return await self.connection.fetchval(sql, *args)

    async def execute(self, sql: str, *args: object) -> int:
        status: str = await self.connection.execute(sql, *args)
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            await self.connection.executemany(sql, rows)


# Short statements only: compiling one with the JIT (PostgreSQL decides by its
# cost estimate) took 10-28 ms for a claim that runs in under 1 ms.
SESSION_SETTINGS = {"jit": "off"}


async def _keep_session(_: asyncpg.Connection) -> None:
    """Pooled connections carry no session state of ours (no LISTEN, SET or
    cursor outlives a unit of work, and transactions always close), so the
    round trip of asyncpg's default reset on every release is skipped."""


class PostgresDatabase:
    dialect: Dialect = POSTGRES

    def __init__(self, dsn: str, *, pool_size: int) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=min(2, self.pool_size),
                        max_size=self.pool_size,
                        statement_cache_size=512,
                        max_inactive_connection_lifetime=300,
                        reset=_keep_session,
                        server_settings=SESSION_SETTINGS,
                    )
        return self._pool

    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A pooled connection (`async with`), released when the block ends."""
        if self._pool is None:
            return self._first_connection()
        return self._pool.acquire()  # type: ignore[no-any-return]

    @asynccontextmanager
    async def _first_connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self.pool()
        async with pool.acquire() as connection:
            yield connection

    async def write(self, work: Work[T], *, settings: LocalSettings = ()) -> T:
        if not settings:
            async with self.connection() as connection, connection.transaction():
                return await work(PostgresTx(connection))
        local = "".join(f"; SET LOCAL {name} = {value}" for name, value in settings)
        async with self.connection() as connection:
            # The settings travel with BEGIN: one round trip for both.
            await connection.execute("BEGIN" + local)
            try:
                result = await work(PostgresTx(connection))
            except BaseException:
                try:
                    await connection.execute("ROLLBACK")
                except Exception:
                    # Not a connection to hand back mid-transaction.
                    connection.terminate()
                raise
            await connection.execute("COMMIT")
            return result

    async def read(self, work: Work[T]) -> T:
        async with self.connection() as connection:
            return await work(PostgresTx(connection))

    async def read_point(self, work: Work[T]) -> T:
        return await self.read(work)

    async def ping(self) -> None:
        await self.read(lambda tx: tx.fetchval("SELECT 1"))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
