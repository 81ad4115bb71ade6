"""`x-api-key` authentication. The key's name is the actor recorded on changes and
the subject of rate limiting (`throttle.py`)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from potok_state.kit.errors import Unauthorized
from potok_state.kit.throttle import Throttle
from potok_state.settings import ApiKey


class ApiKeyRing:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = [(key.name, key.key.get_secret_value().encode()) for key in keys]

    def actor_for(self, presented: str) -> str | None:
        """The name of the matching key. Every key is compared, each in constant
        time, so the answer's timing says nothing about which keys exist."""
        candidate = presented.encode()
        actor = None
        for name, key in self._keys:
            if hmac.compare_digest(candidate, key):
                actor = name
        return actor


class ApiKeyAuth(APIKeyHeader):
    """The `x-api-key` security scheme (the Authorize button of /api-docs) and
    its check in one dependency: the answer is the actor, the key's name."""

    def __init__(self) -> None:
        super().__init__(
            name="x-api-key", auto_error=False, description="One of the keys in API_KEYS."
        )

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        throttle: Throttle = request.app.state.throttle
        address = request.client.host if request.client is not None else "unknown"
        await throttle.refuse_if_failing(address)
        presented = request.headers.get("x-api-key")
        if not presented:
            await throttle.count_failure(address)
            raise Unauthorized("Missing x-api-key header.")
        ring: ApiKeyRing = request.app.state.api_keys
        actor = ring.actor_for(presented)
        if actor is None:
            await throttle.count_failure(address)
            raise Unauthorized("Unknown API key.")
        request.state.actor = actor
        await throttle.admit(actor)
        return actor


Actor = Annotated[str, Security(ApiKeyAuth())]
