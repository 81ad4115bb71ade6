"""`Idempotency-Key`: the one way every write of the API answers a retry
(docs/guarantees.md, "Idempotency keys").

A write made with a key looks for the answer a first request with that key
stored; finding one, it replays it (or refuses a different request with the
same key) and does nothing else. Otherwise it does its work with an
`IdempotencyWrite`, which the storage layer stores with the change, in the
same transaction (storage/idempotency.py): there is no window in which the
change exists without its answer. When two requests with the same key race,
the loser's change rolls back and it replays the winner's answer.

A key is scoped to the caller (the API key's name): two callers never share
one. The fingerprint (method, path, body) ties it to one request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from potok_state.clock import utc_now
from potok_state.kit.errors import InvalidInput
from potok_state.storage.idempotency import (
    IdempotencyConflict,
    IdempotencyRecord,
    IdempotencyWrite,
)

Model = TypeVar("Model", bound=BaseModel)
OutcomeT = TypeVar("OutcomeT")
ResultT = TypeVar("ResultT")


class OutcomeCodec(Protocol[OutcomeT]):
    """How an outcome is kept for an idempotent replay, and read back."""

    def encode(self, outcome: OutcomeT, /) -> bytes: ...

    def decode(self, data: bytes, /) -> OutcomeT: ...


@dataclass(frozen=True, slots=True)
class ModelCodec(Generic[Model]):
    model: type[Model]

    def encode(self, outcome: Model) -> bytes:
        return outcome.model_dump_json().encode()

    def decode(self, data: bytes) -> Model:
        return self.model.model_validate_json(data)


class IdempotencyKeyReused(InvalidInput):
    code = "idempotency_key_reused"


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Applied(Generic[OutcomeT]):
    outcome: OutcomeT
    replayed: bool


class AnswerStore(Protocol):
    async def idempotency_record(
        self, scope: str, not_before: datetime
    ) -> IdempotencyRecord | None: ...


async def idempotent(
    answers: AnswerStore,
    key: IdempotencyKey | None,
    *,
    actor: str,
    ttl_seconds: int,
    codec: OutcomeCodec[OutcomeT] | None,
    perform: Callable[[IdempotencyWrite[ResultT] | None], Awaitable[ResultT]],
    respond: Callable[[ResultT], OutcomeT],
) -> Applied[OutcomeT]:
    """Answer a write once per key. `perform` does the work, storing
    `write.encode(result)` in its transaction when given a write; `respond`
    turns its result into the answer (raising, it refuses the request, and
    inside the transaction rolls the change back: refusals are not
    remembered). `codec` keeps answers (needed with a key only)."""
    if key is None:
        return Applied(respond(await perform(None)), replayed=False)
    if codec is None:
        raise TypeError("a write answered with an idempotency key needs a codec")
    scope = f"{actor}:{key.key}"
    not_before = utc_now() - timedelta(seconds=ttl_seconds)
    previous = await answers.idempotency_record(scope, not_before)
    if previous is not None:
        return Applied(_replay(previous, key, codec), replayed=True)
    answered: list[OutcomeT] = []

    def encode(result: ResultT) -> bytes:
        answered.append(respond(result))
        return codec.encode(answered[-1])

    write = IdempotencyWrite(
        scope=scope, fingerprint=key.fingerprint, encode=encode, expired_before=not_before
    )
    try:
        result = await perform(write)
    except IdempotencyConflict:
        winner = await answers.idempotency_record(scope, not_before)
        if winner is None:
            raise
        return Applied(_replay(winner, key, codec), replayed=True)
    # The outcome stored for replays is the answer (work that turned out to
    # change nothing may have stored none).
    return Applied(answered[-1] if answered else respond(result), replayed=False)


def _replay(
    record: IdempotencyRecord, key: IdempotencyKey, codec: OutcomeCodec[OutcomeT]
) -> OutcomeT:
    if record.fingerprint != key.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request.",
            details={"idempotencyKey": key.key},
        )
    return codec.decode(record.outcome)
