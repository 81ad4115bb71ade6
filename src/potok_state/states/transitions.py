"""Transitions: the pure rules a write is decided by. A new state must start
in one of its type's initial statuses, an existing one may only move along its
type's transition table (types without a table accept any status), metadata a
write gives must match the type's `metadataSchema`, a condition on the version
must hold, and a lapsed lease is an ordinary change by `system:lease`
(docs/leases.md)."""

from __future__ import annotations

from datetime import datetime

from potok_state.changes.model import EventType, JsonObject, StateChange, StoredState
from potok_state.states.errors import (
    InvalidTransition,
    ReservedId,
    UnknownStatus,
    VersionMismatch,
)
from potok_state.states.machines import StateMachine

LEASE_ACTOR = "system:lease"
LEASE_REASON = "lease expired"

RESERVED_IDS = frozenset({"watch"})
"""Ids a state may not have: they name routes under /states/{entity}/."""


def transition(
    machine: StateMachine | None,
    entity: str,
    entity_id: str,
    existing: StoredState | None,
    *,
    status: str,
    metadata: JsonObject | None,
    reason: str | None,
    actor: str,
    ttl: int | None = None,
) -> StateChange:
    """The change a write asks for, checked against the type's transition
    table (when it has one): create, or move from the current status."""
    if ttl is not None:  # 0 drops the lease
        lease_ttl = ttl or None
    elif existing is not None:  # a write renews the lease the state holds
        lease_ttl = existing.lease_ttl
    else:
        lease_ttl = machine.lease.ttl if machine is not None and machine.lease else None
    if machine is not None and status not in machine.statuses:
        raise UnknownStatus(
            f"{status!r} is not a status of {entity}.",
            details={"status": status, "statuses": list(machine.statuses)},
        )
    if existing is None:
        if entity_id in RESERVED_IDS:
            raise ReservedId(
                f"{entity_id!r} cannot be an entity id: GET /states/{entity}/{entity_id} "
                "is a route of its own.",
                details={"entityId": entity_id},
            )
        if machine is not None and not machine.allows_initial(status):
            raise InvalidTransition(
                f"A new {entity} cannot start as {status!r}.",
                details={
                    "entity": entity,
                    "entityId": entity_id,
                    "currentStatus": None,
                    "requestedStatus": status,
                    "allowed": list(machine.initial),
                },
            )
        metadata = metadata if metadata is not None else {}
        _check_metadata(machine, metadata)
        return StateChange(
            entity=entity,
            entity_id=entity_id,
            event=EventType.CREATED,
            status=status,
            previous_status=None,
            metadata=metadata,
            version=1,
            reason=reason,
            actor=actor,
            lease_ttl=lease_ttl,
        )
    if machine is not None and not machine.allows(existing.status, status):
        raise InvalidTransition(
            f"{entity} {entity_id!r} cannot go from {existing.status!r} to {status!r}.",
            details={
                "entity": entity,
                "entityId": entity_id,
                "currentStatus": existing.status,
                "requestedStatus": status,
                "allowed": list(machine.allowed_from(existing.status)),
            },
        )
    if metadata is not None:  # metadata the write leaves as it is is not checked again
        _check_metadata(machine, metadata)
    return StateChange(
        entity=entity,
        entity_id=entity_id,
        event=EventType.UPDATED,
        status=status,
        previous_status=existing.status,
        metadata=metadata if metadata is not None else existing.metadata,
        version=existing.version + 1,
        reason=reason,
        actor=actor,
        lease_ttl=lease_ttl,
    )


def _check_metadata(machine: StateMachine | None, metadata: JsonObject) -> None:
    if machine is not None and machine.metadata_schema is not None:
        machine.metadata_schema.check(metadata)


def check_version(existing: StoredState, expected: int | None) -> None:
    if expected is not None and existing.version != expected:
        raise VersionMismatch(
            f"{existing.entity} {existing.entity_id!r} is at version {existing.version}; "
            f"the request expected version {expected}.",
            details={"currentVersion": existing.version, "expectedVersion": expected},
        )


def lapse(state: StoredState, status: str | None, event: EventType) -> StateChange:
    return StateChange(
        entity=state.entity,
        entity_id=state.entity_id,
        event=event,
        status=status,
        previous_status=state.status,
        metadata=state.metadata,
        version=state.version + 1,
        reason=LEASE_REASON,
        actor=LEASE_ACTOR,
    )


def preview(change: StateChange, existing: StoredState | None) -> StoredState:
    """The state a batch item leaves behind, so a later item for the same id is
    validated against it. Only status, metadata and version are read from it;
    the store stamps revisions and times when it writes."""
    assert change.status is not None
    return StoredState(
        entity=change.entity,
        entity_id=change.entity_id,
        status=change.status,
        metadata=change.metadata,
        version=change.version,
        revision=existing.revision if existing else 0,
        created_at=existing.created_at if existing else datetime.min,
        updated_at=existing.updated_at if existing else datetime.min,
        lease_ttl=change.lease_ttl,
    )
