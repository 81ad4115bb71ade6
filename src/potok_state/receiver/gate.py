"""`WebhookReceiver`: verify a delivery, parse it into a typed event, and drop
duplicates — the part every receiver needs, whatever its web framework."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, JsonValue, ValidationError

from potok_state.events.schemas import Event
from potok_state.receiver.dedup import AsyncDedupStore, DedupStore, MemoryDedupStore
from potok_state.receiver.signatures import (
    DEFAULT_TOLERANCE_SECONDS,
    InvalidDelivery,
    Scheme,
    verify,
)


class MalformedEvent(InvalidDelivery):
    """Correctly signed, but the body is not an event payload."""


class EntityChange(BaseModel):
    """The `data` of an `entity.*` event (docs/data-model.md)."""

    entity: str
    id: str
    version: int
    previousStatus: str | None
    newStatus: str | None
    metadata: dict[str, JsonValue]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A verified delivery: the event (the change-feed model) and its attempt number."""

    event: Event
    attempt: int | None

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def type(self) -> str:
        return self.event.event

    @property
    def revision(self) -> int:
        return self.event.revision

    @property
    def change(self) -> EntityChange | None:
        """The entity change an `entity.*` event carries; None for other events."""
        if not self.event.event.startswith("entity."):
            return None
        return EntityChange.model_validate(self.event.data)


class WebhookReceiver:
    """Checks deliveries signed with `secret` (several during a rotation).

    `store` remembers the event ids already handled (an in-process LRU by default;
    `RedisDedupStore`/`AsyncRedisDedupStore` to share it between processes). When
    handling fails after `accept`, call `release` so the service's retry is handled
    rather than taken for a duplicate (the framework adapters do this).
    """

    def __init__(
        self,
        secret: str | Sequence[str],
        *,
        store: DedupStore | AsyncDedupStore | None = None,
        scheme: Scheme | str = Scheme.STANDARD,
        tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    ) -> None:
        self.secrets = [secret] if isinstance(secret, str) else list(secret)
        self.store: DedupStore | AsyncDedupStore = store or MemoryDedupStore()
        self.scheme = Scheme(scheme)
        self.tolerance_seconds = tolerance_seconds
        self._async_store = inspect.iscoroutinefunction(self.store.claim)

    def open(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> ReceivedEvent:
        """The verified event (no de-duplication); `InvalidDelivery` otherwise."""
        verify(
            headers,
            body,
            self.secrets,
            scheme=self.scheme,
            tolerance_seconds=self.tolerance_seconds,
            now=now,
        )
        try:
            event = Event.model_validate_json(body)
        except ValidationError as exc:
            raise MalformedEvent(f"the body is not an event: {exc.errors()[0]['msg']}") from None
        lowered = {name.lower(): value for name, value in headers.items()}
        attempt = lowered.get("x-webhook-attempt", "")
        return ReceivedEvent(event, int(attempt) if attempt.isdigit() else None)

    def accept(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> ReceivedEvent | None:
        """The verified event the first time it arrives, None for a duplicate (with a
        synchronous store)."""
        if self._async_store:
            raise TypeError("this receiver has an async store: use accept_async")
        received = self.open(headers, body, now=now)
        return received if self.store.claim(received.id) else None

    async def accept_async(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> ReceivedEvent | None:
        """As `accept`, with a synchronous or an async store."""
        received = self.open(headers, body, now=now)
        claimed = self.store.claim(received.id)
        if inspect.isawaitable(claimed):
            claimed = await claimed
        return received if claimed else None

    def release(self, received: ReceivedEvent) -> None:
        if self._async_store:
            raise TypeError("this receiver has an async store: use release_async")
        self.store.release(received.id)

    async def release_async(self, received: ReceivedEvent) -> None:
        released = self.store.release(received.id)
        if inspect.isawaitable(released):
            await released
