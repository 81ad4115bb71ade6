"""The one way a change is applied: through the store, logged, and honouring
`Idempotency-Key`.

With a key, a retried write replays the first response instead of applying
twice. The outcome is stored in the same transaction as the change, so there is
no window in which the change exists without its replay record."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, Protocol, TypeVar

import structlog
from pydantic import BaseModel

from potok_state.changes.model import (
    AppliedChange,
    Decide,
    IdempotencyRecord,
    IdempotencyWrite,
    StateChange,
    StoredState,
)
from potok_state.changes.payload import event_data
from potok_state.clock import utc_now
from potok_state.kit.errors import InvalidInput
from potok_state.metrics import Metrics
from potok_state.storage.port import (
    IdempotencyConflict,
    StateStore,
)

log = structlog.get_logger("potok_state.changes")

Model = TypeVar("Model", bound=BaseModel)
OutcomeT = TypeVar("OutcomeT")


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


async def apply_change(
    store: StateStore,
    *,
    targets: Sequence[tuple[str, str]],
    decide: Decide,
    respond: Callable[[Sequence[AppliedChange]], OutcomeT],
    actor: str,
    idempotency: IdempotencyKey | None,
    codec: OutcomeCodec[OutcomeT] | None = None,
    ttl_seconds: int,
    metrics: Metrics | None = None,
    hint: Mapping[str, StoredState | None] | None = None,
) -> Applied[OutcomeT]:
    """Apply one change through the store, honouring an idempotency key. A
    replayed outcome is neither logged nor counted again; `codec` stores and
    reads it (needed with an idempotency key only). `hint`: states the caller
    believes current (see `StateStore.apply`)."""
    if idempotency is None:
        applied = await store.apply(targets, decide, event_data, hint=hint)
        _log_applied(applied, metrics)
        return Applied(respond(applied), replayed=False)
    if codec is None:
        raise TypeError("a change applied with an idempotency key needs a codec")

    scope = f"{actor}:{idempotency.key}"
    not_before = utc_now() - timedelta(seconds=ttl_seconds)
    previous = await store.idempotency_record(scope, not_before)
    if previous is not None:
        return Applied(_replay(previous, idempotency, codec), replayed=True)
    answered: list[OutcomeT] = []

    def encode(applied: Sequence[AppliedChange]) -> bytes:
        answered.append(respond(applied))
        return codec.encode(answered[-1])

    write = IdempotencyWrite(
        scope=scope,
        fingerprint=idempotency.fingerprint,
        encode=encode,
        expired_before=not_before,
    )
    try:
        applied = await store.apply(targets, decide, event_data, write, hint)
    except IdempotencyConflict:
        winner = await store.idempotency_record(scope, not_before)
        if winner is None:
            raise
        return Applied(_replay(winner, idempotency, codec), replayed=True)
    _log_applied(applied, metrics)
    # The outcome the store encoded for replays is the answer (a change that
    # decided nothing stored no record).
    return Applied(answered[-1] if answered else respond(applied), replayed=False)


def _log_applied(applied: Sequence[AppliedChange], metrics: Metrics | None) -> None:
    informing = log.is_enabled_for(logging.INFO)  # one check, not one per change
    for change in applied:
        mutation = change.mutation
        if isinstance(mutation, StateChange):
            if metrics is not None:
                metrics.count_transition(
                    mutation.entity, mutation.event.value, mutation.status or ""
                )
            if informing:
                log.info(
                    mutation.event.value,
                    entityType=mutation.entity,
                    entityId=mutation.entity_id,
                    previousStatus=mutation.previous_status,
                    newStatus=mutation.status,
                    version=mutation.version,
                    revision=change.revision,
                    actor=mutation.actor,
                )
        elif informing:
            log.info(mutation.event, revision=change.revision, actor=mutation.actor)


def _replay(
    record: IdempotencyRecord, key: IdempotencyKey, codec: OutcomeCodec[OutcomeT]
) -> OutcomeT:
    if record.fingerprint != key.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request.",
            details={"idempotencyKey": key.key},
        )
    return codec.decode(record.outcome)
