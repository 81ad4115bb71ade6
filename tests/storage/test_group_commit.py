"""SQLite group commit (storage/database.py): the writer thread commits every
unit queued behind a busy one in ONE transaction, each unit in its own
SAVEPOINT, so a unit that fails is rolled back alone and fails alone; the
others commit and every caller gets its own answer.

Against a real SQLite file with `SqliteDatabase` directly, then through the
HTTP API with a real database trigger refusing one entity."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from potok_state.storage.database import SqliteDatabase, Tx
from tests.storage.conftest import MARKED, Install, assert_internal_error

STATES = "/api/v1/states"
UNITS = 8
INSERT = "INSERT INTO items (name) VALUES ($1)"
BLOCKER = "blocker"
FAILING = "failing"


class UnitFailed(Exception):
    """What the failing unit raises after writing its row."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What one unit saw while it ran in the writer thread."""

    name: str
    inside: frozenset[str]  # its own transaction's rows, its own included
    outside: frozenset[str]  # the rows committed at that moment (another connection)


Unit = Callable[[Tx], Coroutine[Any, Any, object]]


def committed_names(path: Path) -> frozenset[str]:
    with closing(sqlite3.connect(path)) as connection:
        return frozenset(row[0] for row in connection.execute("SELECT name FROM items"))


async def names(tx: Tx) -> frozenset[str]:
    return frozenset(row["name"] for row in await tx.fetch("SELECT name FROM items"))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    database = tmp_path / "group-commit.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE items (name TEXT PRIMARY KEY)")
    return database


@pytest.fixture
async def database(path: Path) -> AsyncIterator[SqliteDatabase]:
    db = SqliteDatabase(str(path), readers=2)
    yield db
    await db.close()


def good(path: Path, name: str) -> Unit:
    async def unit(tx: Tx) -> Seen:
        await tx.execute(INSERT, name)
        return Seen(name, await names(tx), committed_names(path))

    return unit


async def raises(tx: Tx) -> object:
    await tx.execute(INSERT, FAILING)
    raise UnitFailed(FAILING)


async def violates(tx: Tx) -> object:
    await tx.execute(INSERT, FAILING)
    await tx.execute(INSERT, BLOCKER)  # the primary key is taken: SQLite refuses it
    raise AssertionError("SQLite accepted a duplicate primary key")


FAILURES: dict[str, Unit] = {"raises": raises, "violates": violates}


async def hold_the_writer(
    database: SqliteDatabase,
) -> tuple[asyncio.Task[object], threading.Event]:
    """A first unit that keeps the writer thread busy until released; whatever
    is queued meanwhile is committed as one group after it."""
    started, release = threading.Event(), threading.Event()

    async def blocker(tx: Tx) -> object:
        await tx.execute(INSERT, BLOCKER)
        started.set()
        assert release.wait(30), "the test never released the writer"
        return BLOCKER

    task = asyncio.create_task(database.write(blocker))
    assert await asyncio.to_thread(started.wait, 30), "the writer thread never ran the blocker"
    return task, release


@pytest.mark.parametrize(
    "failing",
    [{3: "raises"}, {3: "violates"}, {0: "violates", UNITS - 1: "raises"}],
    ids=["raises-in-the-middle", "violates-in-the-middle", "first-and-last-fail"],
)
async def test_a_failed_unit_fails_alone_in_its_group(
    database: SqliteDatabase, path: Path, failing: dict[int, str]
) -> None:
    blocker, release = await hold_the_writer(database)
    units = [
        FAILURES[failing[index]] if index in failing else good(path, f"unit-{index}")
        for index in range(UNITS)
    ]
    callers = [asyncio.create_task(database.write(unit)) for unit in units]
    # Each caller queues its unit in its first step (nothing before the queue
    # awaits), so one turn of the loop queues them all behind the blocker.
    await asyncio.sleep(0)
    assert not any(caller.done() for caller in callers)
    release.set()
    assert await blocker == BLOCKER
    outcomes = await asyncio.gather(*callers, return_exceptions=True)

    good_names = [f"unit-{index}" for index in range(UNITS) if index not in failing]
    # Every other unit committed; the failed ones left nothing, not even the
    # row they wrote before failing.
    assert committed_names(path) == {BLOCKER, *good_names}
    before: list[str] = []
    for index, outcome in enumerate(outcomes):
        kind = failing.get(index)
        if kind == "raises":
            assert isinstance(outcome, UnitFailed), outcome
        elif kind == "violates":
            assert isinstance(outcome, sqlite3.IntegrityError), outcome
            assert "UNIQUE constraint failed: items.name" in str(outcome)
        else:
            # Its own answer, not a neighbour's.
            assert isinstance(outcome, Seen), outcome
            assert outcome.name == f"unit-{index}"
            # One transaction: the units before it in the group are visible to
            # it (a failed one already rolled back), but none of them was
            # committed while it ran.
            before.append(outcome.name)
            assert outcome.inside == {BLOCKER, *before}
            assert outcome.outside == {BLOCKER}


async def test_a_failed_unit_alone_leaves_nothing_and_the_writer_goes_on(
    database: SqliteDatabase, path: Path
) -> None:
    with pytest.raises(UnitFailed):
        await database.write(raises)
    await database.write(good(path, BLOCKER))
    with pytest.raises(sqlite3.IntegrityError):
        await database.write(violates)
    seen = await database.write(good(path, "after"))

    assert isinstance(seen, Seen)
    assert committed_names(path) == {BLOCKER, "after"}


# -- through the HTTP API -------------------------------------------------------------

WRITERS = 200


async def test_concurrent_posts_one_refused_by_the_database(
    client: httpx.AsyncClient, install_failure: Install
) -> None:
    """Many writes at once (committed in groups); the one the database refuses
    answers 500 and takes nothing with it: every other write is 201 and the
    change feed has one gapless revision per write."""
    await install_failure()
    ids = [f"t{index}" for index in range(WRITERS)]
    ids[WRITERS // 2] = MARKED

    responses = await asyncio.gather(
        *(client.post(f"{STATES}/task", json={"entityId": i, "status": "created"}) for i in ids)
    )

    by_id = dict(zip(ids, responses, strict=True))
    assert_internal_error(by_id.pop(MARKED))
    assert {response.status_code for response in by_id.values()} == {201}, [
        r.text for r in by_id.values() if r.status_code != 201
    ]
    revisions = sorted(response.json()["revision"] for response in by_id.values())
    assert revisions == list(range(1, WRITERS))
    feed = await client.get("/api/v1/changes", params={"limit": 1000})
    assert feed.status_code == 200, feed.text
    items = feed.json()["items"]
    assert [item["revision"] for item in items] == revisions
    assert {item["data"]["id"] for item in items} == set(by_id)
    missing = await client.get(f"{STATES}/task/{MARKED}")
    assert missing.status_code == 404, missing.text
    for entity_id, response in by_id.items():
        stored = await client.get(f"{STATES}/task/{entity_id}")
        assert stored.status_code == 200, stored.text
        assert stored.json() == response.json()
