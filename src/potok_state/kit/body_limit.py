"""Request body limit (`REQUEST_BODY_MAX_BYTES`, 413 above it).

A declared Content-Length over the limit is refused before the app runs. A body
without one (chunked) is counted while it streams: the chunk that crosses the
limit raises `BodyTooLarge` out of `receive`, which FastAPI passes through its
body parsing unchanged (it is an HTTPException) and the error handler renders as
the 413 error body. Nothing past the limit is buffered.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from potok_state.kit.errors import error_response


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than {max_bytes} bytes.")


class RequestBodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        max_bytes = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
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
