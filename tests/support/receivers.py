"""Real HTTP webhook receivers on 127.0.0.1 for the tests: an aiohttp server in
the test's event loop that records every request and answers from a script.

Tests wait for outcomes with `eventually` (tests/support/polling.py: poll with
a deadline), never with a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.polling import eventually


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    arrived: float  # time.monotonic()

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def attempt(self) -> int:
        return int(self.headers["x-webhook-attempt"])


@dataclass(slots=True)
class Reply:
    """One answer: a status, extra headers, and optionally a gate the handler
    waits on first (a hanging receiver when the gate is never opened)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    gate: asyncio.Event | None = None


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answered = 0  # requests answered so far (after their gate, if any)
        self.script: list[Reply] = []
        self.default = Reply()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._gates: list[asyncio.Event] = []
        self._arrived = asyncio.Event()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, *replies: Reply, then: Reply | None = None) -> None:
        """Answer the next requests with `replies`, in order, then with `then`
        (or the current default)."""
        self.script.extend(replies)
        if then is not None:
            self.default = then

    def hang(self) -> Reply:
        """A reply that waits until the receiver stops (the client times out)."""
        gate = asyncio.Event()
        self._gates.append(gate)
        return Reply(gate=gate)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Received(
                path=request.path,
                headers={name.lower(): value for name, value in request.headers.items()},
                body=body,
                arrived=time.monotonic(),
            )
        )
        self._arrived.set()
        reply = self.script.pop(0) if self.script else self.default
        if reply.gate is not None:
            await reply.gate.wait()
        self.answered += 1
        return web.Response(status=reply.status, headers=reply.headers)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for gate in self._gates:
            gate.set()
        for reply in [*self.script, self.default]:
            if reply.gate is not None:
                reply.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def at(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    async def wait_for(
        self,
        count: int,
        *,
        path: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[Received]:
        """The first `count` requests (to `path`, when given), once they arrived."""

        async def enough() -> list[Received] | None:
            seen = self.requests if path is None else self.at(path)
            return seen[:count] if len(seen) >= count else None

        return await eventually(enough, timeout=timeout, what=f"{count} requests at {path}")


@asynccontextmanager
async def running_receiver(port: int = 0) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start(port)
    try:
        yield receiver
    finally:
        await receiver.stop()
