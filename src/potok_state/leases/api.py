"""Heartbeats: `POST /states/{entity}/{id}/heartbeat` and the batch form
`POST /states/{entity}/heartbeat` (docs/leases.md)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from potok_state.clock import format_timestamp
from potok_state.kit.auth import Writer
from potok_state.kit.compiled_route import CompiledRoute
from potok_state.kit.errors import Conflict, error_responses
from potok_state.kit.parameters import EntityIdPath, EntityPath
from potok_state.kit.responses import JsonBytes
from potok_state.states.api import state_service
from potok_state.states.errors import StateNotFound
from potok_state.states.schemas import (
    BatchHeartbeatRequest,
    BatchHeartbeatResult,
    HeartbeatRequest,
    HeartbeatResult,
    LeaseView,
)
from potok_state.storage.port import Renewal

# The heartbeat is the hottest write of a presence system: its parameters are
# gathered by a compiled plan and its answer is encoded directly.
router = APIRouter(prefix="/api/v1", tags=["leases"], route_class=CompiledRoute)


class NoLease(Conflict):
    code = "no_lease"


@router.post(
    "/states/{entity}/{entity_id}/heartbeat",
    response_model=LeaseView,
    summary="Renew a state's lease (no revision, history or event)",
    response_description="The renewed lease",
    responses=error_responses(StateNotFound, NoLease),
)
async def heartbeat(
    request: Request,
    entity: EntityPath,
    entity_id: EntityIdPath,
    _: Writer,
    body: HeartbeatRequest | None = None,
) -> Response:
    """404 when the state does not exist; 409 `no_lease` when it holds none or
    its lease has already lapsed (write the state again to take a new one)."""
    ttl = body.ttl if body is not None else None
    [renewal] = await state_service(request).renew_leases(entity, [entity_id], ttl)
    if not renewal.found:
        raise StateNotFound(f"No {entity} with id {entity_id!r}.")
    if renewal.ttl is None or renewal.expires_at is None:
        raise NoLease(
            f"{entity} {entity_id!r} holds no lease, or its lease has lapsed: write the state "
            "again with a ttl to take a new one.",
            details={"entity": entity, "entityId": entity_id},
        )
    return JsonBytes(
        orjson.dumps({"ttl": renewal.ttl, "expiresAt": format_timestamp(renewal.expires_at)})
    )


@router.post(
    "/states/{entity}/heartbeat",
    response_model=BatchHeartbeatResult,
    summary="Renew the leases of many states in one call",
    response_description="One result per id",
    responses=error_responses(),
)
async def heartbeat_many(
    request: Request, entity: EntityPath, body: BatchHeartbeatRequest, _: Writer
) -> BatchHeartbeatResult:
    """Renew the leases of up to 1000 states of one type (optionally with a new `ttl`); each item
    says `ok` or why not (`state_not_found`, `no_lease`). No revision, history or event."""
    renewals = await state_service(request).renew_leases(entity, body.ids, body.ttl)
    items = [_result(renewal) for renewal in renewals]
    renewed = sum(1 for item in items if item.ok)
    return BatchHeartbeatResult(renewed=renewed, failed=len(items) - renewed, items=items)


def _result(renewal: Renewal) -> HeartbeatResult:
    if renewal.ttl is not None and renewal.expires_at is not None:
        lease = LeaseView(ttl=renewal.ttl, expiresAt=renewal.expires_at)
        return HeartbeatResult(entityId=renewal.entity_id, ok=True, lease=lease)
    error = "no_lease" if renewal.found else "state_not_found"
    return HeartbeatResult(entityId=renewal.entity_id, ok=False, error=error)
