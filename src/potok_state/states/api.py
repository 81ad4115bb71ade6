"""States API routes (docs/data-model.md). Parsing and status codes only; the rules
live in `service.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from potok_state.clock import InputTime
from potok_state.events.service import RevisionPruned
from potok_state.idempotency import Applied
from potok_state.kit.auth import Reader, Writer
from potok_state.kit.compiled_route import CompiledRoute
from potok_state.kit.errors import BadRequest, InvalidInput, Unavailable, error_responses
from potok_state.kit.headers import (
    REVISION_HEADER,
    Conditions,
    Idempotency,
    WriteConditions,
    etag,
    replayed_headers,
)
from potok_state.kit.parameters import EntityIdPath, EntityPath, PageCursor, PageLimit
from potok_state.kit.responses import JsonBytes
from potok_state.names import STATUS_PATTERN
from potok_state.states.as_of import AS_OF_PARAMETER, parse_as_of
from potok_state.states.encoding import EncodedState
from potok_state.states.errors import (
    InvalidTransition,
    StateDeleted,
    StateNotFound,
    VersionMismatch,
)
from potok_state.states.queries import StateFilter
from potok_state.states.schemas import (
    BatchRequest,
    BatchResult,
    HistoryPage,
    RecordStateRequest,
    SortSpec,
    StatePage,
    StateView,
    UpdateStateRequest,
)
from potok_state.states.service import StateService

router = APIRouter(prefix="/api/v1", tags=["states"], route_class=CompiledRoute)


def state_service(request: Request) -> StateService:
    # Taken from the app here rather than through a FastAPI dependency: one
    # dependency less to solve on the hottest routes.
    service: StateService = request.app.state.state_service
    return service


def _state_response(applied: Applied[EncodedState], status_code: int = 200) -> Response:
    headers = {"ETag": etag(applied.outcome.version), **replayed_headers(applied)}
    return JsonBytes(applied.outcome.body, status_code=status_code, headers=headers)


@router.post(
    "/states/{entity}",
    response_model=StateView,
    summary="Record a state: create it, or apply a validated transition",
    response_description="The state after the transition (it existed already)",
    responses={
        201: {"model": StateView, "description": "Created"},
        **error_responses(InvalidTransition, BadRequest, Unavailable),
    },
)
async def record_state(
    entity: EntityPath,
    body: RecordStateRequest,
    request: Request,
    actor: Writer,
    idempotency: Idempotency,
) -> Response:
    """Create the state (201), or apply a transition to the one that exists (200), checked against
    its type's transition table. Errors: 409 `invalid_transition` (with `allowed`), 422
    `unknown_status`, `reserved_id`, `metadata_too_large`, `validation_error`. `Idempotency-Key`
    replays the first answer. `ttl` takes a lease."""
    applied = await state_service(request).record_state(
        entity, body, actor=actor, idempotency=idempotency
    )
    created = applied.outcome.version == 1
    return _state_response(applied, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@router.get(
    "/states/{entity}",
    response_model=StatePage,
    summary="Query states of one entity type",
    responses={
        200: {
            "description": "A page of states",
            "headers": {
                REVISION_HEADER: {
                    "description": "The revision the page was read at: watch from it "
                    "(`?after=`) to see every later change.",
                    "schema": {"type": "integer"},
                }
            },
        },
        **error_responses(InvalidInput),
    },
)
async def query_states(
    request: Request,
    entity: EntityPath,
    _: Reader,
    status_in: Annotated[
        list[Annotated[str, Query(pattern=STATUS_PATTERN)]],
        Query(alias="status", description="Repeat to match any of several statuses."),
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    updated_after: Annotated[InputTime | None, Query(alias="updatedAfter")] = None,
    updated_before: Annotated[InputTime | None, Query(alias="updatedBefore")] = None,
    sort: SortSpec = "-updatedAt",
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> Response:
    """Filter by `status` (repeatable), `metadata.<key>=<value>` equality,
    `updatedAfter`/`updatedBefore`; page with `cursor`."""
    metadata_equals = {
        name.removeprefix("metadata."): value
        for name, value in request.query_params.items()
        if name.startswith("metadata.")
    }
    query = StateFilter(
        statuses=tuple(status_in),
        metadata_equals=metadata_equals,
        updated_after=updated_after,
        updated_before=updated_before,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    page = await state_service(request).query_states(entity, query)
    return JsonBytes(page.body, headers={REVISION_HEADER: str(page.revision)})


@router.post(
    "/states/{entity}/batch",
    response_model=BatchResult,
    summary="Record up to 1000 states in one transaction",
    response_description="One result per item (with atomic: true, all of them written)",
    responses=error_responses(InvalidTransition, BadRequest, Unavailable),
)
async def apply_batch(
    entity: EntityPath,
    body: BatchRequest,
    request: Request,
    actor: Writer,
    idempotency: Idempotency,
) -> Response:
    """Up to 1000 records in one transaction, each a create or a transition. `atomic: true`: all or
    nothing (409 or 422 `batch_rejected` listing each failed item); `atomic:
    false`: every valid item is written and each result says ok or why not."""
    applied = await state_service(request).apply_batch(
        entity, body, actor=actor, idempotency=idempotency
    )
    return JsonBytes(applied.outcome.body, headers=replayed_headers(applied))


@router.get(
    "/states/{entity}/{entity_id}",
    response_model=StateView,
    summary="One state, with its version as ETag; or as it was at a revision or a time",
    response_description="The state (or the state as it was); ETag: its version",
    responses=error_responses(StateNotFound, StateDeleted, RevisionPruned),
    # Read from the query string by the route itself, only when there is one:
    # declared as a parameter it would take the plain GET off its compiled
    # plan (kit/compiled_route.py).
    openapi_extra={
        "parameters": [
            {
                "name": AS_OF_PARAMETER,
                "in": "query",
                "required": False,
                "description": "The state as it was at this revision, or at this RFC 3339 time "
                "(the newest revision committed by then).",
                "schema": {
                    "anyOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "format": "date-time"},
                    ]
                },
                "examples": {
                    "revision": {"value": 42},
                    "time": {"value": "2026-11-27T10:00:00Z"},
                },
            }
        ]
    },
)
async def get_state(
    request: Request, entity: EntityPath, entity_id: EntityIdPath, _: Reader
) -> Response:
    """The current state, with `ETag: "<version>"` for `If-Match`. 404 `state_not_found`. A leased
    state is always read fresh (its `lease.expiresAt`).

    With `asOf=<revision>` or `asOf=<RFC 3339 time>`: the state as it was then (without a lease).
    404 `state_not_found` before it existed, 404 `state_deleted` while it was deleted, 410
    `revision_pruned` once HISTORY_RETENTION removed what is needed, 422 `revision_unknown` for a
    revision that has not happened yet, 422 `invalid_as_of`."""
    service = state_service(request)
    if request.scope["query_string"]:
        raw = request.query_params.get(AS_OF_PARAMETER)
        if raw is not None:
            past = await service.state_as_of(entity, entity_id, parse_as_of(raw))
            return JsonBytes(past.body, headers={"ETag": etag(past.version)})
    state = await service.get_state(entity, entity_id)
    return JsonBytes(state.body, headers={"ETag": etag(state.version)})


async def _update(
    entity: str,
    entity_id: str,
    body: UpdateStateRequest,
    service: StateService,
    actor: str,
    conditions: WriteConditions,
    *,
    merge: bool,
) -> Response:
    applied = await service.update_state(
        entity,
        entity_id,
        body,
        merge=merge,
        actor=actor,
        expected_version=conditions.expected_version,
        idempotency=conditions.idempotency,
    )
    return _state_response(applied)


@router.put(
    "/states/{entity}/{entity_id}",
    response_model=StateView,
    summary="Update a state; metadata, when given, replaces",
    response_description="The state after the update; ETag: its version",
    responses=error_responses(
        StateNotFound, InvalidTransition, VersionMismatch, BadRequest, Unavailable
    ),
)
async def replace_state(
    entity: EntityPath,
    entity_id: EntityIdPath,
    body: UpdateStateRequest,
    request: Request,
    actor: Writer,
    conditions: Conditions,
) -> Response:
    """Change status and/or metadata (metadata replaces); `ttl` sets or drops a lease. `If-Match:
    "N"` applies only at version N (412 `version_mismatch`). Errors: 404 `state_not_found`, 409
    `invalid_transition`, 400 `empty_update`."""
    return await _update(
        entity, entity_id, body, state_service(request), actor, conditions, merge=False
    )


@router.patch(
    "/states/{entity}/{entity_id}",
    response_model=StateView,
    summary="Update a state; metadata merges (JSON merge patch)",
    response_description="The state after the update; ETag: its version",
    responses=error_responses(
        StateNotFound, InvalidTransition, VersionMismatch, BadRequest, Unavailable
    ),
)
async def patch_state(
    entity: EntityPath,
    entity_id: EntityIdPath,
    body: UpdateStateRequest,
    request: Request,
    actor: Writer,
    conditions: Conditions,
) -> Response:
    """As PUT, but metadata is merged (JSON merge patch: `null` removes a key)."""
    return await _update(
        entity, entity_id, body, state_service(request), actor, conditions, merge=True
    )


@router.delete(
    "/states/{entity}/{entity_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a state; its history is kept",
    response_description="Deleted; its history is kept",
    responses=error_responses(StateNotFound, VersionMismatch, BadRequest, Unavailable),
)
async def delete_state(
    entity: EntityPath,
    entity_id: EntityIdPath,
    request: Request,
    actor: Writer,
    conditions: Conditions,
) -> Response:
    """Delete the state (204); its history is kept and an `entity.deleted` event is sent. `If-
    Match` honoured (412 `version_mismatch`); 404 `state_not_found`."""
    applied = await state_service(request).delete_state(
        entity,
        entity_id,
        actor=actor,
        expected_version=conditions.expected_version,
        idempotency=conditions.idempotency,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=replayed_headers(applied))


@router.get(
    "/states/{entity}/{entity_id}/history",
    response_model=HistoryPage,
    summary="Every change of one entity, oldest first",
    response_description="A page of its history, oldest first",
    responses=error_responses(StateNotFound, InvalidInput),
)
async def state_history(
    entity: EntityPath,
    entity_id: EntityIdPath,
    request: Request,
    _: Reader,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> Response:
    """Every change of the state, oldest first, with actor, reason and revision; page with
    `cursor`. 404 `state_not_found` when it never existed."""
    return JsonBytes(
        await state_service(request).history(entity, entity_id, limit=limit, cursor=cursor)
    )
