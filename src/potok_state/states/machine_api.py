"""State machine routes (docs/data-model.md, "Transition tables" and
"Definitions over the API"). Parsing and status codes only; the rules live in
`machine_service.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from potok_state.kit.auth import Administrator, PartialReader, Reader
from potok_state.kit.compiled_route import CompiledRoute
from potok_state.kit.errors import BadRequest, InvalidInput, error_responses
from potok_state.kit.headers import Conditions, etag, replayed_headers
from potok_state.kit.parameters import EntityPath, PageCursor, PageLimit
from potok_state.kit.responses import JsonBytes
from potok_state.states.errors import (
    InvalidMachineDefinition,
    MachineNotFound,
    MachineReadOnly,
    StatesStranded,
    VersionMismatch,
)
from potok_state.states.machine_schemas import (
    DefineStateMachine,
    MachineHistoryPage,
    StateMachineView,
)
from potok_state.states.machine_service import MachineService
from potok_state.states.service import StateService

# Their own router: a route's tags add to its router's, and the docs page would
# list these under "states" as well.
router = APIRouter(prefix="/api/v1", tags=["state machines"], route_class=CompiledRoute)


def machine_service(request: Request) -> MachineService:
    service: MachineService = request.app.state.machine_service
    return service


def state_service(request: Request) -> StateService:
    service: StateService = request.app.state.state_service
    return service


def _view_response(
    view: StateMachineView, status_code: int = 200, *, replayed: bool = False
) -> Response:
    headers = {"ETag": etag(view.version)} if view.version is not None else {}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JsonBytes(view.model_dump_json().encode(), status_code=status_code, headers=headers)


@router.get(
    "/state-machines",
    response_model=list[StateMachineView],
    summary="All transition tables",
    response_description="Every transition table",
    responses=error_responses(),
)
async def list_state_machines(request: Request, caller: PartialReader) -> list[StateMachineView]:
    """Every transition table the key may read: statuses, initial and final statuses, allowed
    transitions, the lease new states get, the metadata schema, where the table comes from
    (`builtin`, `file`, `api`) and its version."""
    readable = caller.readable()
    machines = state_service(request).state_machines()
    return machines if readable is None else [m for m in machines if m.entity in readable]


@router.get(
    "/state-machines/{entity}",
    response_model=StateMachineView,
    summary="The transition table of one entity type",
    response_description="The type's transition table; ETag: its version (API-defined types)",
    responses=error_responses(MachineNotFound),
)
async def get_state_machine(request: Request, entity: EntityPath, _: Reader) -> Response:
    """One type's transition table; a type defined over the API has its version as `ETag`. 404
    `state_machine_not_found`."""
    return _view_response(state_service(request).state_machine(entity))


@router.put(
    "/state-machines/{entity}",
    response_model=StateMachineView,
    summary="Define a type's transition table (and metadata schema) over the API",
    response_description="The stored table (it had a definition already); ETag: its version",
    responses={
        201: {"model": StateMachineView, "description": "Defined (the type had no definition)"},
        **error_responses(
            MachineReadOnly, StatesStranded, VersionMismatch, InvalidMachineDefinition, BadRequest
        ),
    },
)
async def define_state_machine(
    request: Request,
    entity: EntityPath,
    body: DefineStateMachine,
    actor: Administrator,
    conditions: Conditions,
    force: Annotated[
        bool,
        Query(description="Store it even though states hold statuses it does not have."),
    ] = False,
) -> Response:
    """Checked as a STATE_MACHINES_FILE table is (422 `invalid_state_machine` naming the problem;
    the `metadataSchema` must be a valid JSON Schema, draft 2020-12). In force at once in this
    process and within a second in every other; recorded in the type's definition history and
    announced as a `machine.updated` event. 201 for a type that had no definition, 200 otherwise
    (the same table again changes nothing). `If-Match: "<version>"` applies it only at that
    version (412 `version_mismatch`); `Idempotency-Key` replays the first answer. 409
    `state_machine_read_only` for a built-in or file type; 409 `states_stranded` with a count
    per status when states hold statuses the table does not have, unless `?force=true`. Needs
    the `admin` scope on the type."""
    applied = await machine_service(request).define(
        entity,
        body,
        actor=actor,
        expected_version=conditions.expected_version,
        force=force,
        idempotency=conditions.idempotency,
    )
    answer = applied.outcome
    return _view_response(
        answer.machine,
        status.HTTP_201_CREATED if answer.created else status.HTTP_200_OK,
        replayed=applied.replayed,
    )


@router.delete(
    "/state-machines/{entity}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Remove a type's definition; its states stay as they are",
    response_description="Removed",
    responses=error_responses(MachineNotFound, MachineReadOnly, VersionMismatch, BadRequest),
)
async def remove_state_machine(
    request: Request, entity: EntityPath, actor: Administrator, conditions: Conditions
) -> Response:
    """The type no longer has a table (it accepts any status, or none with
    STATE_MACHINES_STRICT); its states, their history and the definition history stay. A
    `machine.updated` event with `definition: null`. 404 `state_machine_not_found` when it has no
    definition made over the API, 409 `state_machine_read_only` for a built-in or file type.
    `If-Match` and `Idempotency-Key` honoured."""
    applied = await machine_service(request).remove(
        entity,
        actor=actor,
        expected_version=conditions.expected_version,
        idempotency=conditions.idempotency,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=replayed_headers(applied))


@router.get(
    "/state-machines/{entity}/history",
    response_model=MachineHistoryPage,
    summary="Every change of a type's definition, oldest first",
    response_description="A page of definition changes",
    responses=error_responses(MachineNotFound, InvalidInput),
)
async def state_machine_history(
    request: Request,
    entity: EntityPath,
    _: Reader,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> Response:
    """Who changed the definition, when, the table before and after (`null`: none), and the
    revision of its `machine.updated` event; page with `cursor`. 404 `state_machine_not_found`
    for a type that has neither a table nor a definition history."""
    return JsonBytes(await machine_service(request).history(entity, limit=limit, cursor=cursor))
