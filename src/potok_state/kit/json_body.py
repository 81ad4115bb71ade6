"""JSON request bodies are decoded with orjson, the codec the store writes with,
so every body the service accepts is one it can store, and validated strictly
(kit/request_model.py).

The standard library decoder FastAPI uses by default accepts lone UTF-16
surrogates (`"\\ud800"`), `NaN` and `Infinity`: the first fail in the database
driver (a 500 after validation passed), the others would be stored as `null`.
orjson refuses all three, and invalid UTF-8, with a `JSONDecodeError`, which
FastAPI answers as a 422 `json_invalid` validation error. Text holding NUL
(`"\\u0000"`), which PostgreSQL cannot store in text or JSONB, is refused the same
way, on both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

_ESCAPED_NUL = b"\\u0000"


def decode_json(raw: bytes) -> Any:
    """The body's JSON value; `orjson.JSONDecodeError` when it is not JSON or
    holds text the database cannot store."""
    value = orjson.loads(raw)
    # Only a body that spells the escape can hold NUL (raw control characters are
    # invalid JSON), so the walk is skipped for nearly every body.
    if _ESCAPED_NUL in raw and _holds_nul(value):
        position = raw.index(_ESCAPED_NUL)
        raise orjson.JSONDecodeError(
            "text may not contain NUL (\\u0000)", raw.decode(errors="replace"), position
        )
    return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


class JsonBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = decode_json(await self.body())
        return self._json


class JsonBodyRoute(APIRoute):
    """Route class of every router that takes a JSON body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decode_with_orjson(request: Request) -> Response:
            return await handler(JsonBodyRequest(request.scope, request.receive))

        return decode_with_orjson
