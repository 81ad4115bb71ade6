"""Revision floors: for every cache key, the newest revision of it that this
host has written or been told of. A cached value older than its key's floor is
stale and is never served (docs/architecture.md, "Caches").

Floors live in a fixed table of slots, one 8-byte integer each, indexed by a
stable hash of the key. Several keys may share a slot; a slot holds the highest
revision written to any of them, so sharing can only turn a fresh value into a
miss, never let a stale one through. Floors only grow.

With `serve --workers N` the table is a file mapped into every process of the
host (`shared_path`), so a write in one process raises the floor that every
other process checks before serving from its near cache: the write is
answered only after its floors are raised, so no process can serve the older
value after that. Raising is serialized across processes with a file lock
(read-max-write of a slot is not atomic otherwise).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import zlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext

from potok_state.changes.model import AppliedChange, StateChange

DEFAULT_SLOTS = 1 << 18  # 2 MiB


def state_key(entity: str, entity_id: str) -> str:
    """The cache key of one state, in every cache (near, local and global Redis)."""
    return f"state:{entity}:{entity_id}"


class RevisionFloors:
    def __init__(self, *, slots: int = DEFAULT_SLOTS, shared_path: str | None = None) -> None:
        if slots & (slots - 1):
            raise ValueError("the number of floor slots must be a power of two")
        self._mask = slots - 1
        self._lock = threading.Lock()
        self._file: int | None = None
        self._map: mmap.mmap | None = None
        if shared_path is None:
            self._table = memoryview(bytearray(8 * slots)).cast("q")
        else:
            self._file = os.open(shared_path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._file).st_size < 8 * slots:
                os.ftruncate(self._file, 8 * slots)
            self._map = mmap.mmap(self._file, 8 * slots)
            self._table = memoryview(self._map).cast("q")

    @property
    def shared(self) -> bool:
        return self._file is not None

    def _slot(self, key: str) -> int:
        return zlib.crc32(key.encode()) & self._mask

    def get(self, key: str) -> int:
        value: int = self._table[self._slot(key)]
        return value

    def raise_to(self, key: str, revision: int) -> None:
        self.raise_many(((key, revision),))

    def raise_many(self, floors: Iterable[tuple[str, int]]) -> None:
        slots = [(self._slot(key), revision) for key, revision in floors]
        table = self._table
        with self._lock, self._across_processes():
            for slot, revision in slots:
                if table[slot] < revision:
                    table[slot] = revision

    def _across_processes(self) -> AbstractContextManager[object]:
        return _FileLock(self._file) if self._file is not None else nullcontext()

    def committed(self, applied: Sequence[AppliedChange]) -> None:
        """The store's commit hook: raise the floors of the states a change set
        writes, as it commits."""
        self.raise_many(
            (state_key(change.mutation.entity, change.mutation.entity_id), change.revision)
            for change in applied
            if isinstance(change.mutation, StateChange)
        )

    def close(self) -> None:
        self._table.release()
        if self._map is not None:
            self._map.close()
        if self._file is not None:
            os.close(self._file)
            self._file = None


class _FileLock:
    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor

    def __enter__(self) -> None:
        fcntl.lockf(self.descriptor, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self.descriptor, fcntl.LOCK_UN)
