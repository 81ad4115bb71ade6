"""A watch stream as an HTTP response: Server-Sent Events written straight to
the ASGI `send`, one chunk per batch of events."""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from potok_state.watch.hub import HEARTBEAT, Watcher, WatchHub

RETRY_MS = 2000
"""How long an EventSource waits before it reconnects (the `retry:` field)."""


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
        opening = b"retry: %d\n\n" % RETRY_MS
        if self.hub is None or self.watcher is None:
            await send({"type": "http.response.body", "body": opening + self.final})
            return
        watcher = self.watcher
        watcher.task = asyncio.current_task()
        disconnect = asyncio.create_task(self._until_disconnect(receive, watcher))
        try:
            await self._stream(send, watcher, opening)
        except asyncio.CancelledError:
            if not watcher.cut_while_sending:
                raise
            # Cut off while the client was not reading: the transport is closed
            # without a last chunk, which it would never take.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return
        finally:
            disconnect.cancel()
            self.hub.leave(watcher)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, send: Send, watcher: Watcher, opening: bytes) -> None:
        assert self.hub is not None

        async def send_chunk(chunk: bytes, revision: int) -> None:
            watcher.sending = True
            try:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                watcher.sending = False
            watcher.delivered = revision

        await send_chunk(opening, watcher.delivered)
        ends = None
        if self.timeout_seconds is not None:
            ends = asyncio.get_running_loop().call_later(self.timeout_seconds, watcher.end)
        try:
            await self.hub.catch_up(watcher, send_chunk)
            if self.timeout_seconds == 0:
                return
            while watcher.final is None:
                chunk, revision = await watcher.next_chunk()
                if watcher.final is not None:
                    break
                if chunk:
                    await send_chunk(chunk, revision)
                    watcher.sent_since_beat = chunk is not HEARTBEAT
            if watcher.final:
                await send_chunk(watcher.final, watcher.delivered)
        finally:
            if ends is not None:
                ends.cancel()

    @staticmethod
    async def _until_disconnect(receive: Receive, watcher: Watcher) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        watcher.end()
