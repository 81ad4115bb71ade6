"""Per-request context: the request id (echoed as `X-Request-Id`, bound into every
log line), one access log line and one metrics observation per request, and the
last-resort 500 renderer.

The 500 is rendered here rather than by Starlette's outermost error middleware so
that it still carries the request id header and body field.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid

import asyncpg
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from potok_state.kit.errors import error_response
from potok_state.logging import bind_request_id
from potok_state.metrics import UNMATCHED_ROUTE, Metrics

DATABASE_ERRORS = (asyncpg.PostgresError, sqlite3.Error)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

log = structlog.get_logger("potok_state.http")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        bind_request_id(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            if b"%00" in scope.get("query_string", b"") or "\x00" in scope["path"]:
                # No text field stores NUL (PostgreSQL cannot): refused before any route.
                refusal = error_response(
                    422, "nul_not_allowed", "The URL holds a NUL (%00), which no field may hold."
                )
                await refusal(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if isinstance(exc, DATABASE_ERRORS):
                # A driver's message may quote the values of the statement: the
                # class and the request id only.
                log.error("request.failed", error=type(exc).__name__)
            else:
                log.exception("request.failed", error=type(exc).__name__)
            if response_started:
                raise
            response = error_response(500, "internal_error", "An unexpected error occurred.")
            await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None)
            if self.metrics is not None:
                self.metrics.observe_request(
                    route or UNMATCHED_ROUTE, scope["method"], status, seconds
                )
            log.info(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                route=route,
                status=status,
                key=scope.get("state", {}).get("actor"),
                duration_ms=round(seconds * 1000, 2),
            )


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID_REQUEST_ID.match(candidate) else None
    return None
