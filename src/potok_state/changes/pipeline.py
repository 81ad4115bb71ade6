"""The one way a change is applied: through the store, logged, and honouring
`Idempotency-Key` (idempotency.py): the answer is stored in the same
transaction as the change."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import structlog

from potok_state.changes.model import (
    AppliedChange,
    Decide,
    StateChange,
    StoredState,
)
from potok_state.changes.payload import event_data
from potok_state.idempotency import Applied, IdempotencyKey, OutcomeCodec, idempotent
from potok_state.metrics import Metrics
from potok_state.storage.port import ChangeAnswer, StateStore

log = structlog.get_logger("potok_state.changes")

OutcomeT = TypeVar("OutcomeT")


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

    async def perform(answer: ChangeAnswer | None) -> Sequence[AppliedChange]:
        applied = await store.apply(targets, decide, event_data, answer, hint)
        _log_applied(applied, metrics)
        return applied

    return await idempotent(
        store,
        idempotency,
        actor=actor,
        ttl_seconds=ttl_seconds,
        codec=codec,
        perform=perform,
        respond=respond,
    )


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
