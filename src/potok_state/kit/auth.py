"""`x-api-key` authentication and scopes (docs/operations.md, "API keys and
scopes").

Every `/api/v1` route declares the scope it needs through one of the
dependencies below; the key's name is the actor recorded on changes, the
subject of rate limiting (`throttle.py`) and the `key` of log lines and metrics.
A route under `/states/{entity}` checks the scope on that type; a route without
a type needs the scope on every type, except the change feed, the watch stream
and the machine list, which take any read scope and show only what it covers.

A request without `x-api-key` may instead carry the operator console's session
cookie (console/sessions.py, docs/console.md): the session stands for the key
it was opened with, with that key's scopes, on the API routes as on the console.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from potok_state.kit.errors import Forbidden, Unauthorized
from potok_state.kit.scopes import ApiKey, Grants, Scope, Types
from potok_state.kit.throttle import Throttle
from potok_state.metrics import Metrics

SCHEME_NAME = "ApiKeyAuth"


@dataclass(frozen=True, slots=True)
class Caller:
    """The key a request authenticated with: its name and what it may do."""

    name: str
    grants: Grants

    def readable(self) -> Types:
        """The entity types this key may read (None: all, and what has no type)."""
        return self.grants.types(Scope.READ)


class CookieSessions(Protocol):
    """Sessions carried by a cookie instead of `x-api-key` (the console's)."""

    def carried_by(self, request: Request) -> bool:
        """Does the request present a session cookie at all?"""
        ...

    async def caller(self, request: Request) -> Caller | None:
        """The key of the request's session; None when the session is unknown,
        expired or its key is gone. Forbidden when the request changes
        something without proof that it comes from the console."""
        ...


class ApiKeyRing:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = [
            (key.key.get_secret_value().encode(), Caller(key.name, key.grants)) for key in keys
        ]

    def named(self, name: str) -> list[tuple[bytes, Caller]]:
        """The keys called `name` as configured now (two while one is rotated):
        each one's value and caller."""
        return [(key, caller) for key, caller in self._keys if caller.name == name]

    def caller_for(self, presented: str) -> Caller | None:
        """The matching key. Every key is compared, each in constant time, so
        the answer's timing says nothing about which keys exist."""
        candidate = presented.encode()
        found = None
        for key, caller in self._keys:
            if hmac.compare_digest(candidate, key):
                found = caller
        return found


async def authenticate(request: Request) -> Caller:
    """The caller of this request, checked once per request.

    A valid key is never refused for others' failures: failed attempts are
    counted per client address, and past the limit only further failures from
    that address are answered 429 instead of 401 (throttle.py)."""
    known: Caller | None = getattr(request.state, "caller", None)
    if known is not None:
        return known
    throttle: Throttle = request.app.state.throttle
    ring: ApiKeyRing = request.app.state.api_keys
    sessions: CookieSessions | None = getattr(request.app.state, "cookie_sessions", None)
    presented = request.headers.get("x-api-key")
    if presented is None and sessions is not None and sessions.carried_by(request):
        caller = await sessions.caller(request)
        if caller is None:
            raise await failed_authentication(
                request, "unknown_session", "The console session has ended; sign in again."
            )
    else:
        caller = ring.caller_for(presented) if presented else None
        if caller is None:
            raise await failed_authentication(
                request,
                "missing_key" if not presented else "unknown_key",
                "Missing x-api-key header." if not presented else "Unknown API key.",
            )
    request.state.caller = caller
    request.state.actor = caller.name
    await throttle.admit(caller.name)
    return caller


async def failed_authentication(request: Request, reason: str, message: str) -> Unauthorized:
    """Count a failed authentication (metric, and the client address's
    failures: RateLimited past the limit); the 401 to raise otherwise."""
    metrics: Metrics = request.app.state.metrics
    throttle: Throttle = request.app.state.throttle
    metrics.auth_failures.labels(reason).inc()
    address = request.client.host if request.client is not None else "unknown"
    await throttle.count_failure(address)
    return Unauthorized(message)


def check_scope(request: Request, caller: Caller, scope: Scope, entity: str | None) -> None:
    """Forbidden unless the caller may use `scope` on `entity` (None: every type)."""
    if not caller.grants.allows(scope, entity):
        raise _refuse(request, caller, scope, entity)


def _refuse(request: Request, caller: Caller, scope: Scope, entity: str | None) -> Forbidden:
    metrics: Metrics = request.app.state.metrics
    metrics.forbidden.labels(caller.name, scope.value).inc()
    if entity is None:
        what = f"the {scope.value} scope on every entity type"
    else:
        what = f"the {scope.value} scope on {entity!r}"
    return Forbidden(
        f"The API key {caller.name!r} may not do this: it needs {what}.",
        details={"key": caller.name, "scope": scope.value, "entity": entity},
    )


class ApiKeyAuth(APIKeyHeader):
    """The `x-api-key` security scheme (the Authorize button of /api-docs) and
    the check of one scope in one dependency: the answer is the actor, the
    key's name."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(
            name="x-api-key",
            scheme_name=SCHEME_NAME,
            auto_error=False,
            description="One of the keys in API_KEYS; its scopes decide what it may do.",
        )
        self.scope = scope

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        caller = await authenticate(request)
        entity = request.path_params.get("entity")
        if not caller.grants.allows(self.scope, entity):
            raise _refuse(request, caller, self.scope, entity)
        return caller.name


class PartialReadAuth(APIKeyHeader):
    """Any read scope: the route shows only the types it covers."""

    def __init__(self) -> None:
        super().__init__(
            name="x-api-key",
            scheme_name=SCHEME_NAME,
            auto_error=False,
            description="One of the keys in API_KEYS; its scopes decide what it may do.",
        )

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        caller = await authenticate(request)
        if caller.readable() == frozenset():
            raise _refuse(request, caller, Scope.READ, None)
        return caller


Reader = Annotated[str, Security(ApiKeyAuth(Scope.READ))]
"""A key that may read the route's entity type (or every type); the actor."""
Writer = Annotated[str, Security(ApiKeyAuth(Scope.WRITE))]
"""A key that may write the route's entity type (or every type); the actor."""
Administrator = Annotated[str, Security(ApiKeyAuth(Scope.ADMIN))]
"""A key with the admin scope on the route's entity type (or every type); the actor."""
PartialReader = Annotated[Caller, Security(PartialReadAuth())]
"""A key that may read some types; the route filters by `Caller.readable()`."""
