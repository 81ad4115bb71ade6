"""A watch stream as an HTTP response: Server-Sent Events. The response starts
through ASGI as any other (headers from every middleware); its body is then
written by the hub to the stream's sink (watch/sinks.py), and the response ends
through ASGI once the stream does."""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from potok_state.watch.hub import Watcher, WatchHub
from potok_state.watch.sinks import AsgiSink, StreamSink, stream_transport

RETRY_MS = 2000
"""How long an EventSource waits before it reconnects (the `retry:` field)."""
OPENING = b"retry: %d\n" % RETRY_MS
"""The first bytes of every stream: a field line with no blank line after it, so
it belongs to the first event (a block of its own reads as an empty message to
some clients)."""


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        hub: WatchHub | None = None,
        watcher: Watcher | None = None,
        *,
        final: bytes = b"",
        timeout_seconds: float | None = None,
    ) -> None:
        # No Response.__init__: it would declare a Content-Length.
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
        ]
        self.hub = hub
        self.watcher = watcher
        self.final = final
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if self.hub is None or self.watcher is None:
            await send({"type": "http.response.body", "body": OPENING + self.final})
            return
        hub, watcher = self.hub, self.watcher
        sink: StreamSink | None = None
        try:
            # Through every middleware once: the headers they add go out now.
            await send({"type": "http.response.body", "body": OPENING, "more_body": True})
            sink = stream_transport(scope) or AsgiSink(send, receive)
            hub.attach(watcher, sink)
            await self._stream(hub, watcher, sink)
            if watcher.lost:
                # Aborted or gone: the server must see the connection lost before
                # this returns, or it reports a response left unfinished.
                await sink.closed()
                return
            await send(
                {"type": "http.response.body", "body": watcher.final or b"", "more_body": False}
            )
            await hub.until_flushed(watcher)
            if watcher.lost:
                await sink.closed()
        except asyncio.CancelledError:
            if not (isinstance(sink, AsgiSink) and sink.aborted):
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            if isinstance(sink, AsgiSink):
                sink.close()
            hub.leave(watcher)

    async def _stream(self, hub: WatchHub, watcher: Watcher, sink: StreamSink) -> None:
        ends = None
        if self.timeout_seconds:
            ends = asyncio.get_running_loop().call_later(self.timeout_seconds, watcher.end)
        try:
            await hub.catch_up(watcher)
            if self.timeout_seconds == 0:
                watcher.end()
            if isinstance(sink, AsgiSink):
                await sink.pump(watcher.ended)
            else:
                await watcher.ended
        finally:
            if ends is not None:
                ends.cancel()
