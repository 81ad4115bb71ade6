from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from potok_state.events.schemas import ChangePage, Event, PublishEvent
from potok_state.events.service import (
    ChangeFeed,
    EventDataTooLarge,
    EventPublisher,
    RevisionPruned,
)
from potok_state.kit.auth import PartialReader, Writer
from potok_state.kit.errors import Unavailable, error_responses
from potok_state.kit.headers import Idempotency, answer
from potok_state.kit.json_body import JsonBodyRoute

router = APIRouter(prefix="/api/v1", tags=["events"], route_class=JsonBodyRoute)


async def change_feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed = request.app.state.change_feed
    return feed


async def event_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.event_publisher
    return publisher


@router.get(
    "/changes",
    response_model=ChangePage,
    summary="The global change feed, oldest first, after a revision",
    response_description="A page of changes and events after `after`",
    responses=error_responses(RevisionPruned),
)
async def list_changes(
    feed: Annotated[ChangeFeed, Depends(change_feed)],
    caller: PartialReader,
    after: Annotated[int, Query(ge=0, le=2**62, description="Revision cursor.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Every change and custom event in revision order after `after`, as the webhook payloads; page
    with `nextAfter`. The same JSON as the watch stream. 410 `revision_pruned` when changes after
    `after` are no longer kept (retention). A key that reads some types only sees their changes
    (`nextAfter` still moves past the others)."""
    return Response(await feed.page(after, limit, caller.readable()), media_type="application/json")


@router.post(
    "/events",
    response_model=Event,
    status_code=status.HTTP_201_CREATED,
    summary="Publish a custom event to subscribers and the change feed",
    response_description="The event as published, with its revision",
    responses=error_responses(EventDataTooLarge, Unavailable),
)
async def publish_event(
    body: PublishEvent,
    response: Response,
    publisher: Annotated[EventPublisher, Depends(event_publisher)],
    actor: Writer,
    idempotency: Idempotency,
) -> Event:
    """Publish `custom.<name>` with any JSON `data`: it gets a revision, goes to subscribers of
    `custom.*` and to watch streams. 422 `event_data_too_large` above METADATA_MAX_BYTES."""
    return answer(await publisher.publish(body, actor=actor, idempotency=idempotency), response)
