"""`GET /watch` and `GET /states/{entity}/watch`: the change feed as Server-Sent
Events, resumable by revision (docs/watch.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request

from potok_state.changes.selection import EVENT_FILTER_PATTERN
from potok_state.kit.auth import PartialReader, Reader
from potok_state.kit.errors import (
    BadRequest,
    TooManyRequests,
    Unavailable,
    json_error_responses,
)
from potok_state.kit.parameters import EntityPath
from potok_state.names import ENTITY_ID_PATTERN, STATUS_PATTERN
from potok_state.watch.filters import WatchFilter
from potok_state.watch.hub import WatchHub
from potok_state.watch.stream import EventStream

router = APIRouter(prefix="/api/v1", tags=["watch"])

MAX_REVISION = 2**62

_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An endless `text/event-stream`: one event per change (`id:` the "
        "revision, `event:` its type, `data:` the change-feed JSON), `: heartbeat` comments "
        "when idle, and a last `event: reset` when the stream cannot go on (`reason`: "
        "`revision_too_old`, `revision_unknown`, `too_slow`).",
        "content": {
            "text/event-stream": {
                "schema": {
                    "description": "One server-sent event.",
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "The revision."},
                        "event": {"type": "string", "description": "The event type, or reset."},
                        "data": {"type": "string", "description": "The event JSON."},
                        "retry": {
                            "type": "integer",
                            "description": "How long to wait before reconnecting, ms.",
                        },
                    },
                    "examples": [
                        {
                            "id": "2",
                            "event": "entity.updated",
                            "data": '{"id":"evt_5af4d9902fc15f762e70470a54d2e861",'
                            '"event":"entity.updated","revision":2,'
                            '"timestamp":"2026-11-27T10:05:00.000Z","data":{"entity":"task",'
                            '"id":"task_123","version":2,"previousStatus":"in_progress",'
                            '"newStatus":"completed","metadata":{"assignee":"user_789",'
                            '"priority":"high"},"reason":"done"}}',
                        }
                    ],
                }
            }
        },
    },
    **json_error_responses(BadRequest, TooManyRequests, Unavailable),
}

Statuses = Annotated[
    list[Annotated[str, Query(pattern=STATUS_PATTERN)]],
    Query(
        alias="status",
        description="Only changes into or out of these statuses (repeatable).",
    ),
]
Events = Annotated[
    list[Annotated[str, Query(pattern=EVENT_FILTER_PATTERN)]],
    Query(
        alias="event",
        description="Only these event types (repeatable): `entity.updated`, `entity.*`, "
        "`custom.*`, `custom.<name>`, `*`.",
    ),
]
IdPrefix = Annotated[
    str | None,
    Query(
        alias="entityId",
        pattern=ENTITY_ID_PATTERN,
        description="Only entities whose id starts with this.",
    ),
]
After = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_REVISION,
        description="Replay every change after this revision first (the `X-Potok-Revision` "
        "of a list, or the last `id:` seen). Default: only changes from now on.",
    ),
]
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=32,
        description="Sent by EventSource on reconnect; wins over `after`.",
    ),
]
Duration = Annotated[
    float | None,
    Query(
        alias="timeout",
        ge=0,
        le=86_400,
        description="End the stream after so many seconds; 0 ends it once the replay "
        "of stored changes is sent. Default: never.",
    ),
]


@router.get(
    "/watch",
    response_class=EventStream,
    status_code=200,
    summary="Watch every change as Server-Sent Events",
    responses=_STREAM_DOC,
)
async def watch_all(
    request: Request,
    caller: PartialReader,
    statuses: Statuses = [],  # noqa: B006 - FastAPI copies query defaults
    events: Events = [],  # noqa: B006
    id_prefix: IdPrefix = None,
    after: After = None,
    duration: Duration = None,
    last_event_id: LastEventId = None,
) -> EventStream:
    """Resume with `Last-Event-ID` or `?after=`; list-then-watch with the
    `X-Potok-Revision` of a list. A key that reads some types only sees their changes."""
    watch_filter = WatchFilter(
        readable=caller.readable(),
        id_prefix=id_prefix,
        statuses=frozenset(statuses),
        events=frozenset(events),
    )
    return await _open(request, caller.name, watch_filter, after, last_event_id, duration)


@router.get(
    "/states/{entity}/watch",
    response_class=EventStream,
    status_code=200,
    summary="Watch the changes of one entity type as Server-Sent Events",
    responses=_STREAM_DOC,
)
async def watch_entity(
    request: Request,
    actor: Reader,
    entity: EntityPath,
    statuses: Statuses = [],  # noqa: B006
    events: Events = [],  # noqa: B006
    id_prefix: IdPrefix = None,
    after: After = None,
    duration: Duration = None,
    last_event_id: LastEventId = None,
) -> EventStream:
    """As `/watch`, for one entity type (custom events are not included)."""
    watch_filter = WatchFilter(
        entity=entity, id_prefix=id_prefix, statuses=frozenset(statuses), events=frozenset(events)
    )
    return await _open(request, actor, watch_filter, after, last_event_id, duration)


async def _open(
    request: Request,
    actor: str,
    watch_filter: WatchFilter,
    after: int | None,
    last_event_id: str | None,
    duration: float | None,
) -> EventStream:
    if last_event_id is not None and last_event_id.strip():
        value = last_event_id.strip()
        if not (value.isascii() and value.isdigit()) or int(value) > MAX_REVISION:
            raise BadRequest(
                "Last-Event-ID must be a revision (an id: this stream sent).",
                details={"lastEventId": value},
            )
        after = int(value)
    hub: WatchHub = request.app.state.watch_hub
    opened = await hub.open(actor, watch_filter, after)
    if opened.watcher is None:
        return EventStream(final=opened.reset or b"")
    return EventStream(hub, opened.watcher, timeout_seconds=duration)
