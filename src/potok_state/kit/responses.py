"""Responses whose JSON is already encoded (`states/encoding.py`): sent as they
are, without the validation and serialization FastAPI gives a returned model.
The route still declares its `response_model`, which is what the OpenAPI
document shows."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response


class JsonBytes(Response):
    media_type = "application/json"

    def __init__(
        self, body: bytes, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(body, status_code=status_code, headers=headers)
