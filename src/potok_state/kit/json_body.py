"""JSON request bodies are decoded with orjson, the codec the store writes with,
so every body the service accepts is one it can store.

The standard library decoder FastAPI uses by default accepts lone UTF-16
surrogates (`"\\ud800"`), `NaN` and `Infinity`: the first fail in the database
driver (a 500 after validation passed), the others would be stored as `null`.
orjson refuses all three, and invalid UTF-8, with a `JSONDecodeError`, which
FastAPI answers as a 422 `json_invalid` validation error.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class JsonBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class JsonBodyRoute(APIRoute):
    """Route class of every router that takes a JSON body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decode_with_orjson(request: Request) -> Response:
            return await handler(JsonBodyRequest(request.scope, request.receive))

        return decode_with_orjson
