"""The large-store section of bench/README.md (`--only scale`): the same
requests on a store of 1,000 states and on one of 1,000,000.

One database per backend, in two phases:

1. 1,000 `user` states (`seed-000000`…) and one entity with 10,000 history rows
   (`deep-history`) are written straight into the tables (bulk SQL, not the
   API); a server (`serve`, one worker, no cache) answers the rows below.
2. The store grows to `--scale-states` states (each with its creation in the
   history) by the same bulk SQL, timed; PostgreSQL gets the `ANALYZE` its
   autovacuum would run. Then `potok-state migrate` and the server's start-up
   (spawn → /health/liveness answers) are timed on that store, and the same
   rows run again.

Rows: the ceiling before and after; GET one state, PUT, POST (closed loop, as
the request rows of the *no cache* profile); the filtered list of 50
(`?status=…&limit=50`) and the deep entity's history paged 100 at a time
(walking its cursors), both one request at a time, so their p50 is the
latency of one request, not queueing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bench.load import (
    SEED_ENTITY,
    USER_STATUSES,
    LoadResult,
    LoadSpec,
    Workload,
    drive,
)
from bench.scenarios import SCALE_SCENARIOS, ScaleScenario
from bench.server import BENCH_API_KEY, BenchSetupError, migrate, running_service

SMALL_STATES = 1000
DEEP_ENTITY_ID = "deep-history"
DEEP_HISTORY = 10_000
HISTORY_PAGE = 100
SEQUENTIAL_REQUESTS = 200
SEED_CHUNK = 100_000
"""States per seeding statement (one transaction each)."""
_SETTINGS = {"CACHE_NEAR_SIZE": "0"}

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class ScaleOptions:
    states: int
    duration: float
    warmup: float
    concurrency: int


@dataclass
class ScalePhase:
    states: int
    results: dict[str, LoadResult] = field(default_factory=dict)

    @property
    def ceiling(self) -> float:
        rates = [r.rate for key, r in self.results.items() if key.startswith("ceiling")]
        return sum(rates) / len(rates) if rates else 0.0

    def ratio(self, key: str) -> float | None:
        result = self.results.get(key)
        if result is None or not self.ceiling:
            return None
        return result.rate / self.ceiling


@dataclass
class ScaleResult:
    backend: str
    small: ScalePhase
    large: ScalePhase
    seed_seconds: float = 0.0
    """Growing the store from the small phase's states to the large one's."""
    migrate_seconds: float = 0.0
    start_seconds: float = 0.0
    """Spawn → /health/liveness answers, on the large store."""

    @property
    def migrate_and_start(self) -> float:
        return self.migrate_seconds + self.start_seconds


# -- bulk seeding ---------------------------------------------------------------------


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


_SQLITE_STATES = """
WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
INSERT INTO states (entity_type, entity_id, status, metadata, version, revision,
    created_at, updated_at)
SELECT ?3, 'seed-' || printf('%06d', i),
    CASE i % 3 WHEN 0 THEN ?4 WHEN 1 THEN ?5 ELSE ?6 END,
    '{"n":' || i || '}', 1, ?7 + i - ?1 + 1, ?8, ?8
FROM n
"""
_SQLITE_CREATED = """
INSERT INTO state_history (revision, entity_type, entity_id, version, event,
    previous_status, new_status, metadata, reason, actor, changed_at)
SELECT revision, entity_type, entity_id, 1, 'entity.created', NULL, status, metadata,
    NULL, 'bench-seed', created_at
FROM states WHERE entity_type = ?1 AND revision > ?2
"""
_SQLITE_DEEP = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
INSERT INTO state_history (revision, entity_type, entity_id, version, event,
    previous_status, new_status, metadata, reason, actor, changed_at)
SELECT ?2 + i, ?3, ?4, i, CASE i WHEN 1 THEN 'entity.created' ELSE 'entity.updated' END,
    CASE i WHEN 1 THEN NULL ELSE ?5 END, ?5, '{"step":' || i || '}', NULL, 'bench-seed', ?6
FROM n
"""


def _seed_sqlite(path: str, start: int, end: int, *, deep: bool) -> None:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        stamp = _sqlite_time(datetime.now(UTC))
        for chunk in range(start, end, SEED_CHUNK):
            stop = min(end, chunk + SEED_CHUNK)
            connection.execute("BEGIN IMMEDIATE")
            head = connection.execute("SELECT value FROM revision_counter WHERE id = 1")
            revision = int(head.fetchone()[0])
            connection.execute(
                _SQLITE_STATES, (chunk, stop, SEED_ENTITY, *USER_STATUSES, revision, stamp)
            )
            connection.execute(_SQLITE_CREATED, (SEED_ENTITY, revision))
            connection.execute(
                "UPDATE revision_counter SET value = ?1 WHERE id = 1", (revision + stop - chunk,)
            )
            connection.execute("COMMIT")
        if deep:
            connection.execute("BEGIN IMMEDIATE")
            revision = int(
                connection.execute("SELECT value FROM revision_counter WHERE id = 1").fetchone()[0]
            )
            connection.execute(
                _SQLITE_DEEP, (DEEP_HISTORY, revision, SEED_ENTITY, DEEP_ENTITY_ID, "online", stamp)
            )
            connection.execute(
                "INSERT INTO states (entity_type, entity_id, status, metadata, version, "
                "revision, created_at, updated_at) VALUES (?1, ?2, 'online', '{}', ?3, ?4, ?5, ?5)",
                (SEED_ENTITY, DEEP_ENTITY_ID, DEEP_HISTORY, revision + DEEP_HISTORY, stamp),
            )
            connection.execute(
                "UPDATE revision_counter SET value = ?1 WHERE id = 1", (revision + DEEP_HISTORY,)
            )
            connection.execute("COMMIT")
    finally:
        connection.close()


_POSTGRES_STATES = """
WITH added AS (
    INSERT INTO states (entity_type, entity_id, status, metadata, version, revision,
        created_at, updated_at)
    SELECT $1, 'seed-' || lpad(i::text, 6, '0'), ($4::text[])[1 + i % 3],
        jsonb_build_object('n', i), 1, $5::bigint + i - $2 + 1, now(), now()
    FROM generate_series($2::int, $3::int - 1) AS i
    RETURNING entity_type, entity_id, status, metadata, revision, created_at
)
INSERT INTO state_history (revision, entity_type, entity_id, version, event,
    previous_status, new_status, metadata, reason, actor, changed_at)
SELECT revision, entity_type, entity_id, 1, 'entity.created', NULL, status, metadata,
    NULL, 'bench-seed', created_at FROM added
"""
_POSTGRES_DEEP = """
WITH steps AS (
    INSERT INTO state_history (revision, entity_type, entity_id, version, event,
        previous_status, new_status, metadata, reason, actor, changed_at)
    SELECT $4::bigint + i, $1, $2, i,
        CASE i WHEN 1 THEN 'entity.created' ELSE 'entity.updated' END,
        CASE i WHEN 1 THEN NULL ELSE 'online' END, 'online',
        jsonb_build_object('step', i), NULL, 'bench-seed', now()
    FROM generate_series(1, $3::int) AS i
)
INSERT INTO states (entity_type, entity_id, status, metadata, version, revision,
    created_at, updated_at)
VALUES ($1, $2, 'online', '{}'::jsonb, $3, $4::bigint + $3, now(), now())
"""
_HEAD = "SELECT value FROM revision_counter WHERE id = 1 FOR UPDATE"
_MOVE_HEAD = "UPDATE revision_counter SET value = value + $1 WHERE id = 1"


async def _seed_postgres(dsn: str, start: int, end: int, *, deep: bool) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for chunk in range(start, end, SEED_CHUNK):
            stop = min(end, chunk + SEED_CHUNK)
            async with connection.transaction():
                head = await connection.fetchval(_HEAD)
                await connection.execute(
                    _POSTGRES_STATES, SEED_ENTITY, chunk, stop, list(USER_STATUSES), head
                )
                await connection.execute(_MOVE_HEAD, stop - chunk)
        if deep:
            async with connection.transaction():
                head = await connection.fetchval(_HEAD)
                await connection.execute(
                    _POSTGRES_DEEP, SEED_ENTITY, DEEP_ENTITY_ID, DEEP_HISTORY, head
                )
                await connection.execute(_MOVE_HEAD, DEEP_HISTORY)
        # What autovacuum would have done by now on a store this size.
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def seed(database_url: str, start: int, end: int, *, deep: bool = False) -> None:
    """`user` states seed-{start}…seed-{end - 1}, each with its creation in the
    history; with `deep`, also DEEP_ENTITY_ID and its DEEP_HISTORY changes."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        await asyncio.to_thread(_seed_sqlite, url.database, start, end, deep=deep)
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    await _seed_postgres(dsn, start, end, deep=deep)


# -- one phase ------------------------------------------------------------------------


def _spec(
    scenario: ScaleScenario,
    base_url: str,
    pid: int,
    options: ScaleOptions,
    states: int,
    history_from: int,
) -> LoadSpec:
    workload = Workload(
        kind=scenario.kind,
        base_url=base_url,
        api_key=BENCH_API_KEY,
        seeded_ids=states,
        tag=uuid.uuid4().hex[:8],
        history_entity=DEEP_ENTITY_ID,
        history_from=history_from,
        history_page=HISTORY_PAGE,
        history_pages=DEEP_HISTORY // HISTORY_PAGE,
    )
    if scenario.sequential:
        return LoadSpec(workload, pid, concurrency=1, count=SEQUENTIAL_REQUESTS, warmup_count=10)
    return LoadSpec(
        workload,
        pid,
        concurrency=options.concurrency,
        duration=options.duration,
        warmup=options.warmup,
    )


async def _history_start(database_url: str) -> int:
    """The revision before the deep entity's first change (its cursors count from it)."""
    sql = "SELECT min(revision) - 1 FROM state_history WHERE entity_type = $1 AND entity_id = $2"
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        path = url.database

        def read() -> int:
            with sqlite3.connect(path) as connection:
                row = connection.execute(
                    sql.replace("$1", "?1").replace("$2", "?2"), (SEED_ENTITY, DEEP_ENTITY_ID)
                ).fetchone()
            return int(row[0])

        return await asyncio.to_thread(read)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval(sql, SEED_ENTITY, DEEP_ENTITY_ID))
    finally:
        await connection.close()


async def _measure_phase(
    phase: ScalePhase,
    backend: str,
    database_url: str,
    workdir: Path,
    options: ScaleOptions,
    pool: ProcessPoolExecutor,
    progress: ProgressFn,
) -> float:
    """Every scale row on a fresh server; the server's start-up seconds."""
    history_from = await _history_start(database_url)
    loop = asyncio.get_running_loop()
    settings = {"DATABASE_URL": database_url, **_SETTINGS}
    started = time.perf_counter()
    async with running_service(workdir, settings) as service:
        start_seconds = time.perf_counter() - started
        for scenario in SCALE_SCENARIOS:
            progress(f"[{backend}/scale {phase.states:,}] {scenario.title} …")
            spec = _spec(
                scenario, service.base_url, service.pid, options, phase.states, history_from
            )
            result = await loop.run_in_executor(pool, drive, spec)
            if service.process.poll() is not None:
                raise BenchSetupError(
                    f"the service died during {scenario.key}:\n{service.log_tail()}"
                )
            phase.results[scenario.key] = result
            progress(
                f"    {result.rate:9.1f} req/s  p50 {result.percentile(50):7.2f} ms  "
                f"errors {result.errors}  server CPU {result.server_cpu:.2f}"
            )
            if result.errors:
                progress(f"    errors: {result.error_kinds} e.g. {result.error_sample}")
    return start_seconds


async def measure(
    backend: str,
    database_url: str,
    workdir: Path,
    options: ScaleOptions,
    pool: ProcessPoolExecutor,
    progress: ProgressFn,
) -> ScaleResult:
    """Both phases on one fresh, migrated (PostgreSQL) or empty (SQLite) database."""
    if make_url(database_url).get_backend_name() == "sqlite":
        await migrate(database_url, workdir)
    result = ScaleResult(backend, ScalePhase(SMALL_STATES), ScalePhase(options.states))
    await seed(database_url, 0, SMALL_STATES, deep=True)
    await _measure_phase(result.small, backend, database_url, workdir, options, pool, progress)
    progress(f"[{backend}/scale] seeding {options.states - SMALL_STATES:,} more states …")
    started = time.perf_counter()
    await seed(database_url, SMALL_STATES, options.states)
    result.seed_seconds = time.perf_counter() - started
    progress(f"    {result.seed_seconds:.1f} s")
    result.migrate_seconds = await migrate(database_url, workdir)
    result.start_seconds = await _measure_phase(
        result.large, backend, database_url, workdir, options, pool, progress
    )
    progress(
        f"    migrate {result.migrate_seconds:.2f} s + start {result.start_seconds:.2f} s "
        f"on {options.states:,} states"
    )
    return result
