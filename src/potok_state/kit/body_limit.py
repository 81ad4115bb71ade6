"""Request body limits: size (`REQUEST_BODY_MAX_BYTES`, 413 above it) and pace
(`REQUEST_BODY_TIMEOUT`, 408 when the client stops sending mid-body).

A declared Content-Length over the limit is refused before the app runs. A body
without one (chunked) is counted while it streams: the chunk that crosses the
limit raises `BodyTooLarge` out of `receive`, which FastAPI passes through its
body parsing unchanged (it is an HTTPException) and the error handler renders as
the 413 error body. Nothing past the limit is buffered. A body that stops
arriving raises `BodyTimeout` the same way, and the 408 closes the connection:
a client that opens many requests and never finishes them holds nothing for
long.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from potok_state.kit.errors import error_response


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than {max_bytes} bytes.")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"The request body stopped arriving for {seconds:g} s.",
            headers={"Connection": "close"},
        )


class RequestBodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            refusal = BodyTooLarge(self.max_bytes)
            response = error_response(413, "payload_too_large", refusal.detail)
            await response(scope, receive, send)
            return
        received = 0
        complete = False
        max_bytes = self.max_bytes
        timeout = self.timeout_seconds

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come: no limit
                return await receive()
            try:
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def document_body_limits(spec: dict[str, Any]) -> None:
    """Every operation that takes a body may answer the 408 and 413 of this
    middleware: say so in the OpenAPI document."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    limits = {
        "408": "The request body stopped arriving for REQUEST_BODY_TIMEOUT; the connection "
        "is closed",
        "413": "The request body is larger than REQUEST_BODY_MAX_BYTES",
    }
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if "requestBody" not in operation:
                continue
            responses = operation["responses"]
            for status, description in limits.items():
                responses.setdefault(status, {"description": description, "content": error})
            operation["responses"] = dict(sorted(responses.items()))
