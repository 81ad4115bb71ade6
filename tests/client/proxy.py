"""A TCP proxy in front of the service that breaks connections on purpose: while
`drops` is above 0, the next answer the service starts to send (so it has applied
the request) is not passed on and the connection is closed instead — an answer
lost on the way back. Set `drops` again between requests to lose another."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class DroppingProxy:
    def __init__(self, target_port: int, drops: int) -> None:
        self.target_port = target_port
        self.drops = drops
        self.connections = 0
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        to_upstream = asyncio.create_task(_pump(client_r, upstream_w))
        try:
            while chunk := await upstream_r.read(65536):
                if self.drops > 0:
                    # The service has started to answer: the request is applied.
                    self.drops -= 1
                    self.dropped += 1
                    return
                client_w.write(chunk)
                await client_w.drain()
        except OSError:
            pass
        finally:
            to_upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await to_upstream
            for writer in (client_w, upstream_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()


@asynccontextmanager
async def dropping_proxy(target_port: int, drops: int = 1) -> AsyncIterator[DroppingProxy]:
    proxy = DroppingProxy(target_port, drops)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
