"""Writing change sets (docs/architecture.md, "The write path").

A change set is written only if every target is still at the version its
decision saw (`ChangeSet.expected`); otherwise it is decided again on the
states the database holds and written then. Both databases commit change sets
in groups, one transaction and one log flush for all the changes waiting:

* SQLite: each change set is a unit of work of the writer thread, which
  already commits whatever is queued in one transaction (`database.py`); a
  failed guard is decided again inside the unit, under the write lock.
* PostgreSQL: one flusher per process takes every change set waiting (none two
  of them on the same entity) and writes them with ONE statement in its own
  implicit transaction (`_APPLY`). The statement locks the targets, checks
  their versions, leaves out the change sets whose guard failed, takes one
  block of revisions from `revision_counter` for the rest and writes their
  states, history and outbox rows, and NOTIFYs. The counter's row lock is held
  from the bump to the commit, inside the server, once per group: revisions
  still commit in order (a reader that has seen N has seen everything below
  N), and one log flush serves the whole group. A change set whose guard
  failed comes back with its targets' current rows; the flusher decides it
  again and puts it first in line, so within a process it is written next.

A write that carries an idempotency record is written alone, in an explicit
transaction, because the record holds the answer, which depends on the
revisions the statement takes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
import structlog

from potok_state.changes.model import AppliedChange, StoredState
from potok_state.clock import utc_now
from potok_state.storage.changeset import (
    ChangeSet,
    Decision,
    HistoryRow,
    StateRow,
    lease_expiry,
)
from potok_state.storage.commits import OUTBOX_CHANNEL
from potok_state.storage.database import (
    SESSION_SETTINGS,
    Database,
    PostgresDatabase,
    PostgresTx,
    Tx,
)
from potok_state.storage.dialect import POSTGRES, Dialect
from potok_state.storage.idempotency import forget_expired, keep_answer
from potok_state.storage.port import ChangeAnswer, WriteContention
from potok_state.storage.rows import OUTBOX_COLUMNS, STATE_COLUMNS, load_states, state_from_row

log = structlog.get_logger(__name__)

CommitHook = Callable[[Sequence[AppliedChange]], None]
"""Told of a change set as it commits: on SQLite in the writer thread, under
the write lock, just before COMMIT; on PostgreSQL as soon as the statement
returns. It must be quick and thread-safe (the cache raises its revision
floors here, so no process of the host serves the older state from then on)."""

# A group stops growing at this many mutations (a bigger change set goes alone).
MAX_GROUP_MUTATIONS = 2000
# Decisions of one change that other processes' writes may overtake.
MAX_DECISIONS = 32


class ChangeWriter:
    async def write(
        self, decision: Decision, changes: ChangeSet, idempotency: ChangeAnswer | None
    ) -> list[AppliedChange]:
        """Write `changes` (decided on states that may be stale by now), or
        what `decision` decides on the current states."""
        raise NotImplementedError

    async def close(self) -> None:
        """Finish what is queued."""


def change_writer(db: Database, hook: CommitHook | None) -> ChangeWriter:
    if isinstance(db, PostgresDatabase):
        return PostgresChangeWriter(db, hook or _no_hook)
    return SqliteChangeWriter(db, hook or _no_hook)


def _no_hook(_: Sequence[AppliedChange]) -> None:
    pass


# -- SQLite ---------------------------------------------------------------------------


class SqliteChangeWriter(ChangeWriter):
    def __init__(self, db: Database, hook: CommitHook) -> None:
        self.db = db
        self.hook = hook
        self._last_at = datetime.min.replace(tzinfo=UTC)

    async def write(
        self, decision: Decision, changes: ChangeSet, idempotency: ChangeAnswer | None
    ) -> list[AppliedChange]:
        return await self.db.write(lambda tx: self._write(tx, decision, changes, idempotency))

    async def _write(
        self,
        tx: Tx,
        decision: Decision,
        changes: ChangeSet,
        idempotency: ChangeAnswer | None,
    ) -> list[AppliedChange]:
        dialect = tx.dialect
        if idempotency is not None:
            await forget_expired(tx, idempotency)
        for entity, entity_id, version in changes.expected:
            found = await tx.fetchval(_VERSION, entity, entity_id)
            if (found or 0) != version:
                # Decided on a stale state: decide again under the write lock.
                decided = decision.changes(await load_states(tx, decision.targets))
                if decided is None:
                    return []
                changes = decided
                break
        last = await tx.fetchval(_BUMP_COUNTER, changes.count)
        assert last is not None, "revision_counter is missing its row; run migrations"
        base = int(last) - changes.count
        # The clock is read under the write lock, so time never runs backwards
        # along revisions (`updatedAfter`, feed timestamps).
        at = max(utc_now(), self._last_at)
        self._last_at = at
        now = dialect.time(at)

        def state_row(row: StateRow) -> tuple[object, ...]:
            expires = lease_expiry(at, row.lease_ttl)
            return (
                row.entity,
                row.entity_id,
                row.status,
                row.metadata,
                row.version,
                base + row.offset,
                now,
                row.lease_ttl,
                None if expires is None else dialect.time(expires),
            )

        await tx.executemany(_DELETE_STATE, changes.deletes)
        await tx.executemany(_UPDATE_STATE, [state_row(s) for s in changes.states if not s.is_new])
        await tx.executemany(_INSERT_STATE, [state_row(s) for s in changes.states if s.is_new])
        await tx.executemany(
            _INSERT_HISTORY,
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
                    _life_start(dialect, h, now),
                )
                for h in changes.history
            ],
        )
        await tx.executemany(
            _INSERT_EVENT,
            [
                (base + e.offset, e.event_id, e.event, e.entity, e.entity_id, e.data, now)
                for e in changes.events
            ],
        )
        applied = changes.applied(base, at)
        if idempotency is not None:
            await keep_answer(tx, idempotency, applied, at)
        self.hook(applied)
        return applied


_VERSION = "SELECT version FROM states WHERE entity_type = $1 AND entity_id = $2"
_BUMP_COUNTER = "UPDATE revision_counter SET value = value + $1 WHERE id = 1 RETURNING value"
_DELETE_STATE = "DELETE FROM states WHERE entity_type = $1 AND entity_id = $2"
_UPDATE_STATE = (
    "UPDATE states SET status = $3, metadata = $4, version = $5, revision = $6, updated_at = $7, "
    "lease_ttl = $8, lease_expires_at = $9 WHERE entity_type = $1 AND entity_id = $2"
)
_INSERT_STATE = (
    f"INSERT INTO states ({STATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)"
)
_INSERT_HISTORY = (
    "INSERT INTO state_history (revision, entity_type, entity_id, version, event, "
    "previous_status, new_status, metadata, reason, actor, changed_at, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)


def _life_start(dialect: Dialect, row: HistoryRow, now: object) -> object:
    """The history row's `created_at`: its life's creation time (the commit time
    for one created in this change set), NULL for a deletion."""
    if row.new_status is None:
        return None
    return now if row.created_at is None else dialect.time(row.created_at)


_INSERT_EVENT = f"INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"


# -- PostgreSQL -----------------------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    decision: Decision
    changes: ChangeSet
    targets: frozenset[tuple[str, str]]
    future: asyncio.Future[list[AppliedChange]]
    decisions: int = 1


class PostgresChangeWriter(ChangeWriter):
    def __init__(self, db: PostgresDatabase, hook: CommitHook) -> None:
        self.db = db
        self.hook = hook
        self._waiting: deque[_Waiting] = deque()
        self._ready = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None

    async def write(
        self, decision: Decision, changes: ChangeSet, idempotency: ChangeAnswer | None
    ) -> list[AppliedChange]:
        if idempotency is not None:
            return await self._write_with_key(decision, changes, idempotency)
        future: asyncio.Future[list[AppliedChange]] = asyncio.get_running_loop().create_future()
        targets = frozenset(decision.targets)
        self._waiting.append(_Waiting(decision, changes, targets, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="change-flusher")
        self._ready.set()
        # A cancelled caller cancels only its wait; the change set is written.
        return await future

    async def close(self) -> None:
        if self._flusher is not None:
            while self._waiting:
                self._ready.set()
                await asyncio.sleep(0.001)
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def _flush(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._waiting:
                await self._write_group(self._take_group())

    def _take_group(self) -> list[_Waiting]:
        """The oldest waiting change sets that touch no entity twice, up to
        MAX_GROUP_MUTATIONS (the others keep their place for the next group)."""
        group: list[_Waiting] = []
        taken: set[tuple[str, str]] = set()
        mutations = 0
        later: deque[_Waiting] = deque()
        for waiting in self._waiting:
            fits = not group or mutations + waiting.changes.count <= MAX_GROUP_MUTATIONS
            if fits and taken.isdisjoint(waiting.targets):
                group.append(waiting)
                taken |= waiting.targets
                mutations += waiting.changes.count
            else:
                later.append(waiting)
        self._waiting = later
        return group

    async def _write_group(self, group: list[_Waiting]) -> None:
        try:
            connection = await self._writer_connection()
            rows = await connection.fetch(_APPLY, *_arguments([w.changes for w in group]))
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            if len(group) > 1:
                # A change set created an entity another writer created first:
                # write them one by one, so only that one decides again.
                for waiting in group:
                    await self._write_group([waiting])
                return
            waiting = group[0]
            if self._decide_again(waiting, await self._read_current(waiting)):
                self._waiting.appendleft(waiting)
            return
        except asyncpg.PostgresError as exc:
            if len(group) > 1 and not _is_about_the_connection(exc):
                # Maybe one change set's rows (a constraint, a trigger): write
                # them one by one, so that one fails alone.
                for waiting in group:
                    await self._write_group([waiting])
                return
            self._fail(group, exc)
            return
        except (OSError, asyncpg.InterfaceError) as exc:
            self._fail(group, exc)
            return
        stamped: dict[int, tuple[int, datetime]] = {}
        current: dict[int, dict[str, StoredState]] = {}
        for row in rows:
            if row["base"] is not None:
                stamped[row["cs"]] = (row["base"], row["at"])
            elif row["entity_id"] is not None and row["status"] is not None:
                current.setdefault(row["cs"], {})[row["entity_id"]] = state_from_row(POSTGRES, row)
        again: list[_Waiting] = []
        for index, waiting in enumerate(group):
            if index in stamped:
                base, at = stamped[index]
                applied = waiting.changes.applied(base, at)
                self.hook(applied)
                _answer(waiting, applied)
            elif self._decide_again(waiting, current.get(index, {})):
                again.append(waiting)
        # Decided again on fresh states: first in line, so written next.
        self._waiting.extendleft(reversed(again))

    def _decide_again(self, waiting: _Waiting, current: Mapping[str, StoredState]) -> bool:
        """Decide a change whose guard failed again, on `current`; True when it
        is to be written (else its caller has its answer)."""
        if waiting.future.done():
            return False
        if waiting.decisions >= MAX_DECISIONS:
            waiting.future.set_exception(
                WriteContention(
                    "Too many concurrent writes to the same entities; try again.",
                    details={"decisions": waiting.decisions},
                )
            )
            return False
        waiting.decisions += 1
        try:
            changes = waiting.decision.changes(current)
        except Exception as exc:
            waiting.future.set_exception(exc)
            return False
        if changes is None:
            waiting.future.set_result([])
            return False
        waiting.changes = changes
        return True

    async def _read_current(self, waiting: _Waiting) -> dict[str, StoredState]:
        return await self.db.read(lambda tx: load_states(tx, waiting.decision.targets))

    def _fail(self, group: list[_Waiting], exc: BaseException) -> None:
        if not isinstance(exc, asyncpg.PostgresError) or _is_about_the_connection(exc):
            self._drop_connection()
        for waiting in group:
            if not waiting.future.done():
                waiting.future.set_exception(exc)

    async def _writer_connection(self) -> asyncpg.Connection:
        """The flusher's own connection: its one statement is planned once
        (a generic plan; re-planning it on every group cost more than running
        it) and it never waits for a pooled connection."""
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(
                self.db.dsn,
                server_settings={**SESSION_SETTINGS, "plan_cache_mode": "force_generic_plan"},
            )
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def _write_with_key(
        self, decision: Decision, changes: ChangeSet, idempotency: ChangeAnswer
    ) -> list[AppliedChange]:
        """Alone, in an explicit transaction that also stores the answer. After
        a failed guard the targets stay locked by this transaction, so the
        second decision holds (unless another writer creates an entity first:
        then all of it starts again)."""
        for _ in range(MAX_DECISIONS):
            try:
                applied = await self._transaction_with_key(decision, changes, idempotency)
            except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                current = await self.db.read(lambda tx: load_states(tx, decision.targets))
                decided = decision.changes(current)
                if decided is None:
                    return []
                changes = decided
                continue
            if applied:
                self.hook(applied)
            return applied
        raise WriteContention(
            "Too many concurrent writes to the same entities; try again.",
            details={"decisions": MAX_DECISIONS},
        )

    async def _transaction_with_key(
        self, decision: Decision, changes: ChangeSet, idempotency: ChangeAnswer
    ) -> list[AppliedChange]:
        async with self.db.connection() as connection, connection.transaction():
            await forget_expired(PostgresTx(connection), idempotency)
            rows = await connection.fetch(_APPLY, *_arguments([changes]))
            if rows and rows[0]["base"] is None:
                current = {
                    row["entity_id"]: state_from_row(POSTGRES, row)
                    for row in rows
                    if row["entity_id"] is not None and row["status"] is not None
                }
                decided = decision.changes(current)
                if decided is None:
                    return []
                rows = await connection.fetch(_APPLY, *_arguments([decided]))
                changes = decided
            if not rows or rows[0]["base"] is None:
                raise asyncpg.DeadlockDetectedError("the targets changed under their locks")
            applied = changes.applied(rows[0]["base"], rows[0]["at"])
            await keep_answer(PostgresTx(connection), idempotency, applied, rows[0]["at"])
            return applied


def _answer(waiting: _Waiting, applied: list[AppliedChange]) -> None:
    if not waiting.future.done():
        waiting.future.set_result(applied)


def _is_about_the_connection(exc: asyncpg.PostgresError) -> bool:
    state = getattr(exc, "sqlstate", "") or ""
    return state[:2] in ("08", "57", "53", "58")


def _arguments(groups: Sequence[ChangeSet]) -> list[str]:
    """The `_APPLY` parameters for these change sets (`cs` = their index): one
    JSON array of rows per part of the statement. asyncpg encodes a text array
    element by element (a type check each); one JSON text per part costs
    PostgreSQL one parse and the service one `orjson.dumps`."""
    expected: list[dict[str, object]] = []
    sets: list[dict[str, object]] = []
    deletes: list[dict[str, object]] = []
    written: list[dict[str, object]] = []
    history: list[dict[str, object]] = []
    outbox: list[dict[str, object]] = []
    for cs, changes in enumerate(groups):
        sets.append({"cs": cs, "n": changes.count})
        expected.extend(
            {"cs": cs, "entity_type": entity, "entity_id": entity_id, "version": version}
            for entity, entity_id, version in changes.expected
        )
        deletes.extend(
            {"cs": cs, "entity_type": entity, "entity_id": entity_id}
            for entity, entity_id in changes.deletes
        )
        written.extend(
            {
                "cs": cs,
                "entity_type": s.entity,
                "entity_id": s.entity_id,
                "status": s.status,
                "metadata": orjson.Fragment(s.metadata),
                "version": s.version,
                "off": s.offset,
                "is_new": s.is_new,
                "lease_ttl": s.lease_ttl,
            }
            for s in changes.states
        )
        history.extend(
            {
                "cs": cs,
                "off": h.offset,
                "entity_type": h.entity,
                "entity_id": h.entity_id,
                "version": h.version,
                "event": h.event,
                "previous_status": h.previous_status,
                "new_status": h.new_status,
                "metadata": orjson.Fragment(h.metadata),
                "reason": h.reason,
                "actor": h.actor,
                "created_at": h.created_at,
            }
            for h in changes.history
        )
        outbox.extend(
            {
                "cs": cs,
                "off": e.offset,
                "event_id": e.event_id,
                "event": e.event,
                "entity_type": e.entity,
                "entity_id": e.entity_id,
                "data": e.data,
            }
            for e in changes.events
        )
    return [
        orjson.dumps(part).decode() for part in (expected, sets, deletes, written, history, outbox)
    ]


# The statement of the module docstring. The targets' row locks come first
# (`locked`, in key order), the counter's last (`counter` only runs once
# `failed` has read `locked`), so two statements never wait on each other in
# opposite orders. A change set whose guard failed is left out of `sets`, so
# nothing of it is written and it takes no revision; its targets' current rows
# are returned instead (status NULL: absent).
_APPLY = f"""
WITH expected AS (
    SELECT * FROM json_to_recordset($1::json)
        AS e(cs int, entity_type text, entity_id text, version int)
), locked AS (
    SELECT s.*
    FROM states s JOIN expected e USING (entity_type, entity_id)
    ORDER BY s.entity_type, s.entity_id
    FOR UPDATE OF s
), failed AS (
    SELECT DISTINCT e.cs FROM expected e LEFT JOIN locked l USING (entity_type, entity_id)
    WHERE coalesce(l.version, 0) <> e.version
), sets AS (
    SELECT s.cs, s.n, (sum(s.n) OVER (ORDER BY s.cs) - s.n)::bigint AS before
    FROM json_to_recordset($2::json) AS s(cs int, n int)
    WHERE s.cs NOT IN (SELECT cs FROM failed)
), total AS (
    SELECT coalesce(sum(n), 0)::int AS n FROM sets
), counter AS (
    UPDATE revision_counter SET value = value + (SELECT n FROM total)
    WHERE id = 1 AND (SELECT n FROM total) > 0
    RETURNING value - (SELECT n FROM total) AS base,
        date_trunc('milliseconds', clock_timestamp()) AS at
), gone AS (
    DELETE FROM states s
    USING counter, sets JOIN json_to_recordset($3::json)
        AS d(cs int, entity_type text, entity_id text) USING (cs)
    WHERE s.entity_type = d.entity_type AND s.entity_id = d.entity_id
), written AS (
    SELECT w.*, c.base + sets.before + w.off AS revision, c.at
    FROM counter c, sets JOIN json_to_recordset($4::json) AS w(
        cs int, entity_type text, entity_id text, status text, metadata jsonb, version int,
        off int, is_new bool, lease_ttl int
    ) USING (cs)
), changed AS (
    UPDATE states s SET status = w.status, metadata = w.metadata, version = w.version,
        revision = w.revision, updated_at = w.at, lease_ttl = w.lease_ttl,
        lease_expires_at = w.at + make_interval(secs => w.lease_ttl)
    FROM written w
    WHERE NOT w.is_new AND s.entity_type = w.entity_type AND s.entity_id = w.entity_id
), created AS (
    INSERT INTO states ({STATE_COLUMNS})
    SELECT w.entity_type, w.entity_id, w.status, w.metadata, w.version, w.revision,
        w.at, w.at, w.lease_ttl, w.at + make_interval(secs => w.lease_ttl)
    FROM written w WHERE w.is_new
), history AS (
    INSERT INTO state_history (revision, entity_type, entity_id, version, event,
        previous_status, new_status, metadata, reason, actor, changed_at, created_at)
    SELECT c.base + sets.before + h.off, h.entity_type, h.entity_id, h.version, h.event,
        h.previous_status, h.new_status, h.metadata, h.reason, h.actor, c.at,
        CASE WHEN h.new_status IS NOT NULL THEN coalesce(h.created_at, c.at) END
    FROM counter c, sets JOIN json_to_recordset($5::json) AS h(
        cs int, off int, entity_type text, entity_id text, version int, event text,
        previous_status text, new_status text, metadata jsonb, reason text, actor text,
        created_at timestamptz
    ) USING (cs)
), events AS (
    INSERT INTO outbox ({OUTBOX_COLUMNS})
    SELECT c.base + sets.before + o.off, o.event_id, o.event, o.entity_type, o.entity_id,
        o.data, c.at
    FROM counter c, sets JOIN json_to_recordset($6::json) AS o(
        cs int, off int, event_id text, event text, entity_type text, entity_id text, data text
    ) USING (cs)
), notified AS (
    SELECT pg_notify('{OUTBOX_CHANNEL}', (base + (SELECT n FROM total))::text) FROM counter
)
SELECT sets.cs, c.base + sets.before AS base, c.at, NULL::text AS entity_type,
    NULL::text AS entity_id, NULL::text AS status, NULL::text AS metadata, NULL::int AS version,
    NULL::bigint AS revision, NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,
    NULL::int AS lease_ttl, NULL::timestamptz AS lease_expires_at
FROM sets, counter c, (SELECT count(*) FROM notified) n
UNION ALL
SELECT f.cs, NULL, NULL, e.entity_type, e.entity_id, l.status, l.metadata::text, l.version,
    l.revision, l.created_at, l.updated_at, l.lease_ttl, l.lease_expires_at
FROM failed f JOIN expected e USING (cs)
    LEFT JOIN locked l USING (entity_type, entity_id)
"""
