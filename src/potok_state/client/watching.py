"""Reading a watch stream (docs/watch.md): Server-Sent Events, and where to resume.

The stream's `id:` is the revision of each event, so the position to resume from
is the last revision handed to the caller; a reconnect sends it as
`Last-Event-ID` and the service replays exactly what came after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import JsonValue, TypeAdapter

from potok_state.client.errors import PotokError
from potok_state.events.schemas import Event

_RESET_BODY: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(dict[str, JsonValue])


class WatchReset(PotokError):
    """The stream cannot go on from where it was: `revision_too_old` (those changes
    are no longer kept) or `revision_unknown` (a revision this store never had).
    List again, then watch from the list's revision."""

    def __init__(self, reason: str, details: dict[str, JsonValue]) -> None:
        super().__init__(f"the watch stream was reset: {reason}")
        self.reason = reason
        self.details = details


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


@dataclass(slots=True)
class SseDecoder:
    """Lines in, events out (the WHATWG event-stream format, comments skipped)."""

    _fields: dict[str, list[str]] = field(default_factory=dict)

    def feed(self, line: str) -> ServerSentEvent | None:
        if line == "":
            fields, self._fields = self._fields, {}
            if "data" not in fields and "event" not in fields:
                return None
            return ServerSentEvent(
                event=fields.get("event", ["message"])[-1],
                data="\n".join(fields.get("data", [])),
                id=fields["id"][-1] if "id" in fields else None,
            )
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        self._fields.setdefault(name, []).append(value.removeprefix(" "))
        return None


@dataclass(slots=True)
class WatchPosition:
    """The last revision handed out; what to do with each incoming event."""

    after: int

    def take(self, sse: ServerSentEvent) -> Event | None:
        """The change this event carries (None for one to skip). After a `too_slow`
        reset the stream ends and the caller reconnects from the position (events
        arrive in order, so it is exactly what was read); other resets raise
        `WatchReset`."""
        if sse.event == "reset":
            details = _RESET_BODY.validate_json(sse.data or "{}")
            reason = str(details.get("reason", "unknown"))
            if reason == "too_slow":
                return None
            raise WatchReset(reason, details)
        if sse.id is None or not sse.data:
            return None
        event = Event.model_validate_json(sse.data)
        if event.revision <= self.after:
            return None  # already handed out before a reconnect
        self.after = event.revision
        return event
