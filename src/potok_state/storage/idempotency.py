"""The `idempotency_keys` table: the answer to a request made with an
`Idempotency-Key`, kept in the transaction of the change it answers
(docs/guarantees.md, "Idempotency keys").

A unit of work that carries an `IdempotencyWrite` first forgets the scope's
expired record, then does its work, then stores the encoded answer. Two
requests with the same key race on the table's primary key: the second one's
insert fails, its whole transaction (the change included) rolls back, and it
is told so with `IdempotencyConflict` (its caller replays the winner's answer).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import asyncpg

from potok_state.clock import utc_now
from potok_state.storage.database import Database, Tx, Work

ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    fingerprint: str
    outcome: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyWrite(Generic[ResultT]):
    """Stored with the change, in the same transaction, so a retried request
    replays exactly what the first one did. `encode` turns what the unit of
    work returned into the answer's bytes; it runs inside the transaction (on
    SQLite in the writer thread), so it must be quick and must not await, and
    whatever it raises rolls the change back."""

    scope: str
    fingerprint: str
    encode: Callable[[ResultT], bytes]
    expired_before: datetime


class IdempotencyConflict(Exception):
    """Another request with the same idempotency key committed first."""


async def forget_expired(tx: Tx, write: IdempotencyWrite[ResultT]) -> None:
    """Drop the scope's record once IDEMPOTENCY_TTL has passed (retention
    prunes the others), so the key may be used again."""
    await tx.execute(_DELETE_EXPIRED, write.scope, tx.dialect.time(write.expired_before))


async def keep_answer(
    tx: Tx, write: IdempotencyWrite[ResultT], result: ResultT, at: datetime
) -> None:
    """Store the answer to `result` in the transaction that produced it."""
    outcome = write.encode(result)
    try:
        await tx.execute(_INSERT, write.scope, write.fingerprint, outcome, tx.dialect.time(at))
    except (sqlite3.IntegrityError, asyncpg.UniqueViolationError):
        raise IdempotencyConflict(write.scope) from None


def keyed(work: Work[ResultT], write: IdempotencyWrite[ResultT] | None) -> Work[ResultT]:
    """`work`, storing its answer in its transaction when there is a key."""
    if write is None:
        return work

    async def work_and_keep(tx: Tx) -> ResultT:
        await forget_expired(tx, write)
        result = await work(tx)
        await keep_answer(tx, write, result, utc_now())
        return result

    return work_and_keep


async def remember(db: Database, write: IdempotencyWrite[ResultT], result: ResultT) -> None:
    """Store the answer to a request that changed nothing in the database (a
    webhook ping), in a transaction of its own."""

    async def nothing_else(_: Tx) -> ResultT:
        return result

    await db.write(keyed(nothing_else, write))


async def find_record(db: Database, scope: str, not_before: datetime) -> IdempotencyRecord | None:
    row = await db.read_point(lambda tx: tx.fetchrow(_FIND, scope, tx.dialect.time(not_before)))
    return None if row is None else IdempotencyRecord(row["fingerprint"], bytes(row["outcome"]))


_DELETE_EXPIRED = "DELETE FROM idempotency_keys WHERE scope = $1 AND created_at < $2"
_INSERT = (
    "INSERT INTO idempotency_keys (scope, fingerprint, outcome, created_at) VALUES ($1, $2, $3, $4)"
)
_FIND = "SELECT fingerprint, outcome FROM idempotency_keys WHERE scope = $1 AND created_at >= $2"
