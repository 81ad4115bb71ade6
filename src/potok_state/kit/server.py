"""The HTTP server's edge: uvicorn's httptools protocol with what uvicorn lacks
(docs/operations.md, "Limits").

* **Request heads have a deadline.** A connection must deliver a whole request head
  within REQUEST_HEADER_TIMEOUT of opening (later requests on a kept-alive
  connection: of their first byte); otherwise it gets a 408 and is closed (within
  one or two HEAD_SWEEP_INTERVALs of the deadline). Bodies have their own pace
  limit (kit/body_limit.py); idle kept-alive connections close after
  KEEP_ALIVE_TIMEOUT.
* **Connections are capped per process.** Up to MAX_CONNECTIONS are served as
  usual. A few more (OVERFLOW_CONNECTIONS) are read only to answer `/health…`
  normally and anything else with an immediate 503, each then closed, so probes
  still see the process while an attacker holds every regular slot. Beyond those
  a connection is aborted as soon as it is accepted.
* **Streaming responses get the socket.** Each HTTP request's scope carries the
  ASGI extension `potok.stream_transport`: its `StreamTransport` lets a response
  that streams for long (a watch stream) write body chunks straight to the
  transport, past the middleware chain, see how much the transport holds, and
  abort the connection when the client stops reading (docs/watch.md, "One hub per
  process").

Why a protocol subclass: uvicorn has no header timeout and its only connection
limit (`limit_concurrency`) answers every request over it with a 503, health
checks included; both belong where the bytes arrive. uvicorn builds one protocol
instance per connection from `Config.http`, in every worker process, so `serve`
with any `--workers` count gets the same edge.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools
import orjson
import structlog
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from potok_state.kit.error_body import ErrorBody
from potok_state.kit.errors import error_response
from potok_state.kit.security_headers import SecurityHeadersMiddleware
from potok_state.logging import bind_request_id
from potok_state.settings import connections_for_open_files

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from potok_state.settings import Settings

log = structlog.get_logger(__name__)

STREAM_TRANSPORT = "potok.stream_transport"
"""The ASGI extension under which each HTTP scope carries its `StreamTransport`."""
OVERFLOW_CONNECTIONS = 32
"""Connections beyond MAX_CONNECTIONS that are still read, to answer health probes."""
OVERFLOW_HEAD_TIMEOUT = 1.0
"""Seconds an overflow connection gets to send its request head."""
HEAD_SWEEP_INTERVAL = 0.5
"""How often the request-head deadlines are looked at."""
REFUSAL_LOG_INTERVAL = 10.0
"""Refused connections are logged as one line per so many seconds."""


YOUNG_GENERATION_THRESHOLD = 10_000
"""Allocations between collections of the youngest generation (Python's default: 700)."""


def settle_heap() -> None:
    """Once the app is built, before it serves: what importing and building it
    made (modules, routes, schemas: objects that live as long as the process) is
    moved out of the cyclic collector's sight, and the young generation is
    collected less often. Measured under the PUT load of the bench: full
    collections walked that heap in 80-120 ms, two or three times a second, about
    a fifth of the server's CPU; settled, writes per server CPU-second rose by about
    23 % (SQLite) and 40 % (PostgreSQL), and 1000 open watch streams cost
    about half as much per write (docs/operations.md, "Sizing"). Garbage is freed
    as before; only cycles among the objects frozen here never are (they live as
    long as the process anyway)."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float
    """Seconds."""
    keep_alive_timeout: float
    """Seconds."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections,
            header_timeout=settings.request_header_timeout / 1000,
            keep_alive_timeout=settings.keep_alive_timeout / 1000,
        )


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration with the edge's limits; it is pickled into every
    worker process of `serve --workers N`, limits included."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **options: Any) -> None:
        super().__init__(app, http=EdgeProtocol, **options)
        self.limits = limits


class StreamChunk:
    """Bytes of a streamed body that go to many connections: framed (HTTP/1.1
    chunked) once, when first needed, for all of them."""

    __slots__ = ("_framed", "body")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._framed: bytes | None = None

    @property
    def framed(self) -> bytes:
        if self._framed is None:
            self._framed = b"%x\r\n%s\r\n" % (len(self.body), self.body)
        return self._framed


class StreamTransport:
    """The socket under a connection's responses, for a handler that streams. Usable
    once its response has started (headers sent through ASGI, chunked framing); the
    handler then writes body chunks here instead of through `send`, and finishes the
    response through `send` as usual. One per connection, made when it opens."""

    __slots__ = ("_lost", "_protocol")

    def __init__(self, protocol: EdgeProtocol, lost: asyncio.Future[None]) -> None:
        self._protocol = protocol
        self._lost = lost

    @property
    def usable(self) -> bool:
        """Whether the response being sent is chunked, started and not over (a
        request pipelined behind it would be the current one: not usable)."""
        cycle = self._protocol.cycle
        return (
            cycle is not None
            and cycle.response_started
            and cycle.chunked_encoding is True
            and not cycle.response_complete
            and not cycle.disconnected
        )

    def write(self, chunk: StreamChunk) -> int:
        """One chunk of the response body (nothing once the connection is closing);
        the bytes handed to the transport, framing included."""
        transport = self._protocol.transport
        if not chunk.body or transport.is_closing():
            return 0
        framed = chunk.framed
        transport.write(framed)
        return len(framed)

    def buffered(self) -> int:
        """Bytes written that the kernel has not taken yet."""
        return self._protocol.transport.get_write_buffer_size()

    def abort(self) -> None:
        """Close the connection now, dropping what is buffered."""
        self._protocol.transport.abort()

    async def drained(self) -> None:
        """Until the transport is below its low-water mark (or the connection is lost)."""
        await self._protocol.flow.drain()

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` (soon) when the connection is lost; at once if it is."""
        self._lost.add_done_callback(lambda _: callback())

    async def closed(self) -> None:
        """Until the connection is lost (after `abort`: the next loop iteration)."""
        await asyncio.shield(self._lost)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline, a connection cap
    that keeps health probes answered, and the transport offered to streams. What
    it adds to each request is kept to two attribute stores (a trivial request
    costs about 13 µs of protocol work)."""

    _refused = 0
    _refusals_logged_at = 0.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "limits", None)
        if not isinstance(limits, ConnectionLimits):
            limits = ConnectionLimits(connections_for_open_files(), 10.0, 5.0)
        self.limits = limits
        # uvicorn's own keep-alive timer, in seconds (its Config takes whole seconds).
        self.timeout_keep_alive = limits.keep_alive_timeout  # type: ignore[assignment]
        self._head_due: float | None = None
        """Loop time by which the request head now arriving must be complete."""
        self._overflow = False
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._extensions: dict[str, dict[object, object]] = {
            STREAM_TRANSPORT: {"transport": StreamTransport(self, self._lost)}
        }

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        open_now = len(self.connections)
        if open_now > self.limits.max_connections + OVERFLOW_CONNECTIONS:
            self._count_refusal()
            transport.abort()
            return
        self._overflow = open_now > self.limits.max_connections
        timeout = OVERFLOW_HEAD_TIMEOUT if self._overflow else self.limits.header_timeout
        self._head_due = self.loop.time() + timeout
        _HeadDeadlines.watch(self.loop, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_due = None
        super().connection_lost(exc)
        if not self._lost.done():
            self._lost.set_result(None)

    def on_headers_complete(self) -> None:
        self._head_due = None
        self.scope["extensions"] = self._extensions
        if not self._overflow:
            super().on_headers_complete()
            return
        app = self.app
        if not _is_health(self.url):
            self._count_refusal()
            # uvicorn reads `self.app` here to start the request's task: this one
            # request is answered by the refusal instead.
            self.app = _refuse_over_limit
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        if self.cycle is not None:
            self.cycle.keep_alive = False

    @property
    def _head_begun(self) -> bool:
        """Part of a request head has arrived (uvicorn starts a scope at its first
        byte and names its method once the head is complete)."""
        return self.scope is not None and "method" not in self.scope

    def check_head(self, now: float) -> None:
        """Close the connection if its request head is overdue. The deadline of a
        later request on a kept-alive connection starts when this first sees its
        head begun (at most HEAD_SWEEP_INTERVAL after its first byte)."""
        if self._head_due is None:
            if self._head_begun:
                self._head_due = now + self.limits.header_timeout
            return
        if now < self._head_due:
            return
        self._head_due = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._head_begun and not answering:
            seconds = OVERFLOW_HEAD_TIMEOUT if self._overflow else self.limits.header_timeout
            self.transport.write(_head_timeout_response(seconds))
        self.transport.close()

    def _count_refusal(self) -> None:
        cls = EdgeProtocol
        cls._refused += 1
        now = time.monotonic()
        if now - cls._refusals_logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "server.connections_refused",
                refused=cls._refused,
                open=len(self.connections),
                max_connections=self.limits.max_connections,
            )
            cls._refused = 0
            cls._refusals_logged_at = now


class _HeadDeadlines:
    """One timer per event loop, rather than one per request: it looks at every
    connection's head deadline each HEAD_SWEEP_INTERVAL (a timer armed and
    cancelled per request cost about 5 µs on uvloop, a few % of a trivial
    request)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        self.loop = loop
        self.connections = connections
        loop.call_later(HEAD_SWEEP_INTERVAL, self._sweep)

    @classmethod
    def watch(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        if loop not in _HEAD_DEADLINES:
            _HEAD_DEADLINES[loop] = cls(loop, connections)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, EdgeProtocol):
                connection.check_head(now)
        self.loop.call_later(HEAD_SWEEP_INTERVAL, self._sweep)


_HEAD_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _HeadDeadlines] = (
    weakref.WeakKeyDictionary()
)


def _is_health(url: bytes) -> bool:
    try:
        path = httptools.parse_url(url).path or b""
    except httptools.HttpParserInvalidURLError:
        return False
    return path == b"/health" or path.startswith(b"/health/")


def _head_timeout_response(seconds: float) -> bytes:
    request_id = uuid.uuid4().hex
    body = orjson.dumps(
        ErrorBody(
            statusCode=408,
            error=HTTPStatus(408).phrase,
            code="request_header_timeout",
            message=f"The request head did not arrive within {seconds:g} s.",
            details={},
            requestId=request_id,
        ).model_dump()
    )
    return b"".join(
        (
            b"HTTP/1.1 408 Request Timeout\r\n",
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % request_id.encode(),
            b"connection: close\r\n\r\n",
            body,
        )
    )


async def _refusal(scope: Scope, receive: Receive, send: Send) -> None:
    request_id = uuid.uuid4().hex
    bind_request_id(request_id)
    response = error_response(
        503,
        "too_many_connections",
        "This process has as many connections as it serves (MAX_CONNECTIONS); try again.",
        headers={"Retry-After": "1", "Connection": "close", "X-Request-Id": request_id},
    )
    await response(scope, receive, send)


_refuse_over_limit = SecurityHeadersMiddleware(_refusal)
