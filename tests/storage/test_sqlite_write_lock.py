"""The SQLite writer's wait for the write lock another process holds
(`begin_write`): it takes the lock soon after it is freed, not after SQLite's
busy handler's sleeps, and gives up with "database is locked" after its timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from potok_state.storage.database import begin_write, connect_sqlite


def _holder(path: Path) -> sqlite3.Connection:
    holder = connect_sqlite(str(path))
    holder.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    return holder


def test_the_lock_is_taken_soon_after_it_is_freed(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    holder = _holder(path)
    writer = connect_sqlite(str(path), busy_timeout_ms=0)
    released_at: list[float] = []

    def release() -> None:
        time.sleep(0.05)
        holder.execute("COMMIT")
        released_at.append(time.monotonic())

    releaser = threading.Thread(target=release)
    releaser.start()
    begin_write(writer)
    taken_at = time.monotonic()
    releaser.join()
    writer.execute("INSERT INTO t VALUES (2)")
    writer.execute("COMMIT")
    # The pauses grow to 2 ms: SQLite's own handler would sleep up to 25 ms by then.
    assert taken_at - released_at[0] < 0.02
    assert [row[0] for row in writer.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    holder.close()
    writer.close()


def test_a_lock_held_too_long_fails_the_write(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    holder = _holder(path)
    writer = connect_sqlite(str(path), busy_timeout_ms=0)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        begin_write(writer, timeout_ms=100)
    assert 0.1 <= time.monotonic() - started < 1.0
    assert not writer.in_transaction
    holder.execute("ROLLBACK")
    holder.close()
    writer.close()
