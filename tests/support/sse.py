"""A Server-Sent Events reader over a real HTTP connection (httpx streaming)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.data)

    @property
    def revision(self) -> int:
        assert self.id is not None, self
        return int(self.id)


class SseParser:
    """Lines in, events out, as httpx-sse (a widely used client) decodes them, which
    is looser than the WHATWG rules: every blank line after a `retry:` field, or
    after any `id:` seen so far, dispatches an event, even one without data. A
    stream that sent a blank line where the spec dispatches nothing shows up here
    as an event with empty data."""

    def __init__(self) -> None:
        self.retry: int | None = None
        self.heartbeats = 0
        self._fields: dict[str, list[str]] = {}
        self._retry: int | None = None
        self._last_id = ""

    def line(self, line: str) -> SseEvent | None:
        """Read one line; the event it completes, if any."""
        if line == "":
            fields, retry = self._fields, self._retry
            self._fields, self._retry = {}, None
            if not (fields or retry is not None or self._last_id):
                return None
            return SseEvent(
                event=fields.get("event", ["message"])[-1],
                data="\n".join(fields.get("data", [])),
                id=self._last_id or None,
            )
        if line.startswith(":"):
            self.heartbeats += line.strip() == ": heartbeat"
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "retry":
            self._retry = self.retry = int(value)
        elif name == "id":
            self._last_id = value
        else:
            self._fields.setdefault(name, []).append(value)
        return None


def parse_sse(text: str) -> list[SseEvent]:
    """Every event of a whole stream's body."""
    parser = SseParser()
    return [event for line in text.splitlines() if (event := parser.line(line)) is not None]


class SseStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.decoder = SseParser()
        self._lines = response.aiter_lines()

    @property
    def retry(self) -> int | None:
        return self.decoder.retry

    @property
    def heartbeats(self) -> int:
        return self.decoder.heartbeats

    async def next(self, timeout: float = 5.0) -> SseEvent | None:  # noqa: ASYNC109
        """The next event; None when the stream ended."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SseEvent | None:
        async for line in self._lines:
            if (event := self.decoder.line(line)) is not None:
                return event
        return None

    async def take(self, count: int, timeout: float = 10.0) -> list[SseEvent]:  # noqa: ASYNC109
        events: list[SseEvent] = []
        while len(events) < count:
            event = await self.next(timeout)
            assert event is not None, f"the stream ended after {events}"
            events.append(event)
        return events

    async def rest(self, timeout: float = 10.0) -> list[SseEvent]:  # noqa: ASYNC109
        """Every event until the server ends the stream."""
        events: list[SseEvent] = []
        while (event := await self.next(timeout)) is not None:
            events.append(event)
        return events


@asynccontextmanager
async def watch(
    client: httpx.AsyncClient, path: str = "/api/v1/watch", **kwargs: Any
) -> AsyncIterator[SseStream]:
    """An open watch stream; the connection is closed on exit."""
    async with client.stream("GET", path, timeout=httpx.Timeout(30, read=None), **kwargs) as r:
        assert r.status_code == 200, (r.status_code, await r.aread())
        assert r.headers["content-type"].startswith("text/event-stream")
        yield SseStream(r)
