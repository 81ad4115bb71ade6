"""The Potok Admin Service's REST API, as one pooled HTTP client
(docs/external.md, "Calls").

Every call has the `DB_CONNECTION_TIMEOUT` timeout. A call that fails for a
reason that may pass (connection error, timeout, 5xx, 429) is retried up to
`DB_RETRY_ATTEMPTS` times with exponential backoff and full jitter, at least as
long as a 429's Retry-After asks; any other 4xx is the Admin Service's answer
and is raised at once (`AdminServiceRejected`). Calls that still fail count
towards a circuit breaker: after `CIRCUIT_THRESHOLD` of them in a row the
circuit opens and calls fail at once (`CircuitOpen`), costing nothing, until a
cool-down passes; then one call probes, and its success closes the circuit.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import structlog

log = structlog.get_logger(__name__)

Json = dict[str, Any]

HEALTH_PATH = "/api/v1/health"
DB_PATH = "/api/v1/db/"
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
RETRY_AFTER_MAX_SECONDS = 30.0
CIRCUIT_THRESHOLD = 3
CIRCUIT_COOLDOWN_SECONDS = 1.0
CIRCUIT_COOLDOWN_MAX_SECONDS = 10.0
POOL_SIZE = 32


class AdminServiceError(Exception):
    """A call to the Admin Service did not succeed."""


class AdminServiceUnavailable(AdminServiceError):
    """Unreachable, too slow, or failing (5xx, 429) through every retry."""


class CircuitOpen(AdminServiceUnavailable):
    """Not called: the Admin Service failed too often lately."""


class AdminServiceRejected(AdminServiceError):
    """The Admin Service refused the call (a 4xx other than 429); retrying the
    same call cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


OnOutcome = Callable[[str], None]
"""Told what each call came to: `ok`, `retried` (ok after retries), `rejected`,
`failed` or `short_circuited` (for metrics)."""


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = CIRCUIT_THRESHOLD,
        cooldown: float = CIRCUIT_COOLDOWN_SECONDS,
        max_cooldown: float = CIRCUIT_COOLDOWN_MAX_SECONDS,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        """Whether a call may go out now: always while closed; once the
        cool-down has passed, one probe at a time."""
        if self.opened_at is None:
            return True
        if self._probing or time.monotonic() - self.opened_at < self.cooldown:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        if self.opened_at is not None:
            log.info("external.circuit_closed")
        self.failures = 0
        self.opened_at = None
        self.cooldown = self.base_cooldown
        self._probing = False

    def abandoned(self) -> None:
        """A call that was let through ended without an outcome (cancelled):
        the next call may probe instead."""
        self._probing = False

    def failed(self) -> None:
        self.failures += 1
        if self._probing:
            self._probing = False
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.opened_at = time.monotonic()
        elif self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = time.monotonic()
            log.warning("external.circuit_opened", failures=self.failures)


class AdminServiceClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_ms: int,
        retries: int,
        breaker: CircuitBreaker | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self.retries = retries
        self.breaker = breaker or CircuitBreaker()
        self.on_outcome = on_outcome
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                connector=aiohttp.TCPConnector(limit=POOL_SIZE),
                headers={"X-API-Key": self.api_key, "Accept": "application/json"},
                timeout=self.timeout,
                json_serialize=lambda value: orjson.dumps(value).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the contract ------------------------------------------------------------

    async def health(self) -> None:
        await self._call("GET", HEALTH_PATH, expect=(200,))

    async def get(self, collection: str, doc_id: str) -> Json | None:
        status, body = await self._call("GET", _document(collection, doc_id), expect=(200, 404))
        return _object(body) if status == 200 else None

    async def create(self, collection: str, document: Json) -> Json | None:
        """The created document; None when one with its `id` exists (409)."""
        status, body = await self._call(
            "POST", DB_PATH + collection, json=document, expect=(200, 201, 409)
        )
        return None if status == 409 else _object(body)

    async def update(self, collection: str, doc_id: str, changes: Json) -> Json | None:
        """The updated document; None when there is none with this id (404)."""
        status, body = await self._call(
            "PATCH", _document(collection, doc_id), json=changes, expect=(200, 404)
        )
        return _object(body) if status == 200 else None

    async def delete(self, collection: str, doc_id: str) -> bool:
        """Whether a document was deleted (False: there was none, 404)."""
        status, _ = await self._call(
            "DELETE", _document(collection, doc_id), expect=(200, 204, 404)
        )
        return status != 404

    async def list(
        self, collection: str, *, limit: int, offset: int = 0, **equals: str
    ) -> list[Json]:
        params = {**equals, "limit": str(limit), "offset": str(offset)}
        _, body = await self._call("GET", DB_PATH + collection, params=params, expect=(200,))
        if not isinstance(body, list):
            raise AdminServiceRejected(200, "a list answer was not a JSON array")
        return [_object(item) for item in body]

    # -- one call, with retries and the circuit breaker --------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...],
        json: Json | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        if not self.breaker.allow():
            self._count("short_circuited")
            raise CircuitOpen("the Admin Service failed repeatedly; calls pause for a moment")
        try:
            return await self._attempts(method, path, expect=expect, json=json, params=params)
        except BaseException:
            self.breaker.abandoned()
            raise

    async def _attempts(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...],
        json: Json | None,
        params: Mapping[str, str] | None,
    ) -> tuple[int, Any]:
        problem, asked_wait = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(max(_backoff(attempt), asked_wait))
            try:
                async with self._http().request(method, path, json=json, params=params) as answer:
                    raw = await answer.read()
                    status, retry_after = answer.status, answer.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                asked_wait = 0.0
                continue
            if status in expect:
                self.breaker.succeeded()
                self._count("retried" if attempt else "ok")
                return status, _parse(raw)
            if status == 429 or status >= 500:
                problem, asked_wait = f"{status}: {_message(raw)}", _seconds(retry_after)
                continue
            # The Admin Service answered: it is up, and this call is wrong.
            self.breaker.succeeded()
            self._count("rejected")
            raise AdminServiceRejected(status, _message(raw))
        self.breaker.failed()
        self._count("failed")
        raise AdminServiceUnavailable(
            f"{method} {path} failed after {self.retries + 1} attempts: {problem}"
        )

    def _count(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)


def _backoff(attempt: int) -> float:
    """Full jitter: anywhere up to the exponential ceiling of this attempt."""
    return random.uniform(0, min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)))


def _seconds(retry_after: str | None) -> float:
    """A Retry-After in seconds (an HTTP date is not honoured: backoff rules)."""
    if retry_after is None or not retry_after.strip().isdigit():
        return 0.0
    return min(float(retry_after.strip()), RETRY_AFTER_MAX_SECONDS)


def _document(collection: str, doc_id: str) -> str:
    return f"{DB_PATH}{collection}/{quote(doc_id, safe='')}"


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AdminServiceRejected(200, "the answer was not JSON") from exc


def _object(body: Any) -> Json:
    if not isinstance(body, dict):
        raise AdminServiceRejected(200, "an entity answer was not a JSON object")
    return body


def _message(raw: bytes) -> str:
    """The `message` of the Admin Service's error body, or the start of the
    body when it has none."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode(errors="replace") or "(no body)"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:500]
    return raw[:200].decode(errors="replace")
