"""Where a watch stream's bytes go once its response has started.

Under `potok-state serve` that is the connection's transport itself
(kit/server.py, `StreamTransport`): the hub writes each round's chunk straight to
it, and what the stream holds in memory is exactly the transport's write buffer.
Under another ASGI server (or an in-process test client) it is an `AsgiSink`: the
chunks queue here and the stream's own task sends them through ASGI `send`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from starlette.types import Receive, Scope, Send

from potok_state.kit.server import STREAM_TRANSPORT, StreamChunk, StreamTransport


class StreamSink(Protocol):
    def write(self, chunk: StreamChunk) -> int:
        """Queue body bytes, never waiting; the bytes queued."""

    def buffered(self) -> int:
        """Bytes written and not yet taken by the connection."""

    def abort(self) -> None:
        """Drop the connection and what it holds."""

    async def drained(self) -> None:
        """Until most of what was written has gone (or the connection is lost)."""

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the connection is gone."""

    async def closed(self) -> None:
        """Until the connection is gone (after `abort`)."""


def stream_transport(scope: Scope) -> StreamTransport | None:
    """The connection's transport, when the server offers it and it can be used."""
    offered = scope.get("extensions", {}).get(STREAM_TRANSPORT)
    transport = offered.get("transport") if isinstance(offered, dict) else None
    if isinstance(transport, StreamTransport) and transport.usable:
        return transport
    return None


class AsgiSink:
    """Chunks queued for ASGI `send`, sent by `pump` from the stream's task. It
    cannot close a connection, so `abort` cancels that task (the server then closes
    the connection without finishing the response)."""

    def __init__(self, send: Send, receive: Receive) -> None:
        self._send = send
        self._chunks: list[bytes] = []
        self._bytes = 0
        self._ready = asyncio.Event()
        self._task = asyncio.current_task()
        self._lost_callbacks: list[Callable[[], None]] = []
        self.aborted = False
        self._listener = asyncio.create_task(self._until_disconnect(receive))

    def write(self, chunk: StreamChunk) -> int:
        body = chunk.body
        if not body or self.aborted:
            return 0
        self._chunks.append(body)
        self._bytes += len(body)
        self._ready.set()
        return len(body)

    def buffered(self) -> int:
        return self._bytes

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        self._chunks.clear()
        self._bytes = 0
        self._lost()
        if self._task is not None:
            self._task.cancel()

    async def drained(self) -> None:
        while self._chunks:
            body = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks.clear()
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
            self._bytes -= len(body)

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._lost_callbacks.append(callback)

    async def pump(self, until: asyncio.Future[None]) -> None:
        """Send what is written until `until` is done."""
        until.add_done_callback(lambda _: self._ready.set())
        while not until.done():
            await self._ready.wait()
            self._ready.clear()
            await self.drained()
        await self.drained()

    async def closed(self) -> None:
        return  # `abort` cancelled the stream's task: the server closes the connection

    def close(self) -> None:
        self._listener.cancel()

    async def _until_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._lost()

    def _lost(self) -> None:
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for callback in callbacks:
            callback()
