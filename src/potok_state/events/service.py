"""The global change feed, read from the outbox by revision, and custom events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from potok_state.changes.model import (
    AppliedChange,
    CustomEvent,
    Mutation,
    StoredState,
)
from potok_state.changes.payload import event_body
from potok_state.changes.pipeline import Applied, IdempotencyKey, ModelCodec, apply_change
from potok_state.events.schemas import Event, PublishEvent
from potok_state.kit.errors import InvalidInput
from potok_state.storage.port import (
    StateStore,
)


class EventDataTooLarge(InvalidInput):
    code = "event_data_too_large"


class InvalidEventData(InvalidInput):
    code = "invalid_event_data"


class ChangeFeed:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def page(self, after: int, limit: int) -> bytes:
        """A `ChangePage` as JSON, built from the stored payload bytes."""
        records = await self.store.changes(after, limit)
        next_after = records[-1].revision if records else after
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
