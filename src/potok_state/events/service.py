"""The global change feed, read from the outbox by revision, and custom events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson
from pydantic import JsonValue

from potok_state.changes.model import (
    AppliedChange,
    CustomEvent,
    Mutation,
    StoredState,
)
from potok_state.changes.payload import event_body
from potok_state.changes.pipeline import apply_change
from potok_state.events.schemas import Event, PublishEvent
from potok_state.idempotency import Applied, IdempotencyKey, ModelCodec
from potok_state.kit.errors import InvalidInput, ServiceError
from potok_state.storage.port import (
    StateStore,
)


class RevisionPruned(ServiceError):
    """The changes asked for are older than what retention keeps
    (docs/operations.md, "Retention")."""

    status_code = 410
    code = "revision_pruned"


async def check_kept(store: StateStore, after: int) -> None:
    """Raise `RevisionPruned` when revisions after `after` were pruned."""
    bounds = await store.revision_bounds()
    kept_from = bounds.oldest if bounds.oldest is not None else bounds.head + 1
    if after < kept_from - 1 and after < bounds.head:
        raise RevisionPruned(
            f"Revisions up to {kept_from - 1} are no longer kept; start after "
            f"{kept_from - 1} (or list the states again).",
            details={"oldestRevision": bounds.oldest, "revision": bounds.head},
        )


class EventDataTooLarge(InvalidInput):
    code = "event_data_too_large"


class InvalidEventData(InvalidInput):
    code = "invalid_event_data"


class ChangeFeed:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def page(self, after: int, limit: int, entities: frozenset[str] | None = None) -> bytes:
        """A `ChangePage` as JSON, built from the stored payload bytes; with
        `entities`, only the changes of those types (the page may then hold
        fewer than `limit` items, and still moves past the others)."""
        records = await self.store.changes(after, limit)
        if not records or records[0].revision != after + 1:
            # Only then can something have been pruned in between.
            await check_kept(self.store, after)
        next_after = records[-1].revision if records else after
        if entities is not None:
            records = [record for record in records if record.entity in entities]
        items = b",".join(event_body(record) for record in records)
        return b'{"items":[' + items + b'],"nextAfter":' + str(next_after).encode() + b"}"


class EventPublisher:
    def __init__(self, store: StateStore, *, data_max_bytes: int, idempotency_ttl: int) -> None:
        self.store = store
        self.data_max_bytes = data_max_bytes
        self.idempotency_ttl = idempotency_ttl

    async def publish(
        self, request: PublishEvent, *, actor: str, idempotency: IdempotencyKey | None = None
    ) -> Applied[Event]:
        """Record a custom event in the outbox, with its own revision."""
        try:
            size = len(orjson.dumps(request.data))
        except orjson.JSONEncodeError as exc:
            # Integers beyond 64 bits or nesting deeper than 254 levels.
            raise InvalidEventData(f"data cannot be stored: {exc}.") from None
        if size > self.data_max_bytes:
            raise EventDataTooLarge(
                f"data is {size} bytes; the limit is {self.data_max_bytes}.",
                details={"size": size, "limit": self.data_max_bytes},
            )

        def decide(_: Mapping[str, StoredState]) -> list[Mutation]:
            return [CustomEvent(event=request.type, data=request.data, actor=actor)]

        def respond(applied: Sequence[AppliedChange]) -> Event:
            change = applied[0]
            return Event(
                id=change.event_id,
                event=request.type,
                revision=change.revision,
                timestamp=change.timestamp,
                data=request.data,
            )

        return await apply_change(
            self.store,
            targets=[],
            decide=decide,
            respond=respond,
            codec=ModelCodec(Event),
            actor=actor,
            idempotency=idempotency,
            ttl_seconds=self.idempotency_ttl,
        )

    async def publish_operational(
        self, event: str, data: dict[str, JsonValue], actor: str
    ) -> Event:
        """Record an event the service raises about itself (`subscription.*`,
        docs/webhooks.md) the way custom events are: on the change feed, the
        watch streams and to the subscribers that ask for it."""
        published = await self.publish(
            PublishEvent.model_construct(type=event, data=data), actor=actor
        )
        return published.outcome
