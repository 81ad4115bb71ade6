"""The client's errors: one base, transient failures apart from answers.

Every answer the service gives on purpose has one body (`ErrorBody`,
docs/operations.md); the client raises it as the exception for its status and
`code`, with the body attached, so a caller can catch as wide or as narrow as it
needs: `PotokError` > `ApiError` > `Conflict` > `InvalidTransition`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import JsonValue, ValidationError

from potok_state.kit.error_body import ErrorBody


class PotokError(Exception):
    """Base of every error the client raises."""


class TransportError(PotokError):
    """The service could not be reached, or the connection broke, after every retry
    the request was allowed. `cause` is the last httpx error."""

    def __init__(self, message: str, *, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ApiError(PotokError):
    """The service answered with an error body."""

    status: ClassVar[int | None] = None  # the status a subclass stands for
    codes: ClassVar[tuple[str, ...]] = ()  # the codes a subclass stands for

    def __init__(self, body: ErrorBody, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{body.statusCode} {body.code}: {body.message}")
        self.body = body
        self.headers = dict(headers or {})

    @property
    def status_code(self) -> int:
        return self.body.statusCode

    @property
    def code(self) -> str:
        return self.body.code

    @property
    def message(self) -> str:
        return self.body.message

    @property
    def details(self) -> dict[str, JsonValue]:
        return self.body.details

    @property
    def request_id(self) -> str | None:
        return self.body.requestId


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    """401: the `x-api-key` is missing or unknown."""

    status = 401


class Forbidden(ApiError):
    """403 `forbidden`: the key lacks the scope the call needs (`details` name it)."""

    status = 403


class NotFound(ApiError):
    """404: `state_not_found`, `subscription_not_found`, `delivery_not_found`, …"""

    status = 404


class Conflict(ApiError):
    status = 409


class InvalidTransition(Conflict):
    """409 `invalid_transition`: the transition table forbids the change."""

    codes = ("invalid_transition",)

    @property
    def current_status(self) -> str | None:
        value = self.details.get("currentStatus")
        return value if isinstance(value, str) else None

    @property
    def requested_status(self) -> str | None:
        value = self.details.get("requestedStatus")
        return value if isinstance(value, str) else None

    @property
    def allowed(self) -> list[str]:
        """The statuses the state may move to from where it is."""
        value = self.details.get("allowed")
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


class NoLease(Conflict):
    """409 `no_lease`: a heartbeat for a state without a lease (or one that lapsed)."""

    codes = ("no_lease",)


class WriteContention(Conflict):
    """409 `write_contention`: other writers kept changing the entities first. Safe to
    send again; the client does so itself for requests that carry an idempotency key."""

    codes = ("write_contention",)


class PreconditionFailed(ApiError):
    status = 412


class VersionMismatch(PreconditionFailed):
    """412 `version_mismatch`: `if_version` did not match."""

    codes = ("version_mismatch",)

    @property
    def current_version(self) -> int | None:
        value = self.details.get("currentVersion")
        return value if isinstance(value, int) else None

    @property
    def expected_version(self) -> int | None:
        value = self.details.get("expectedVersion")
        return value if isinstance(value, int) else None


class PayloadTooLarge(ApiError):
    status = 413


class ValidationFailed(ApiError):
    """422: the request is not valid (`validation_error`, `unknown_status`,
    `metadata_too_large`, `idempotency_key_reused`, …)."""

    status = 422

    @property
    def errors(self) -> list[JsonValue]:
        """Per-field problems of a `validation_error`: `{location, message, type}`."""
        value = self.details.get("errors")
        return value if isinstance(value, list) else []


class BatchRejected(ApiError):
    """409 or 422 `batch_rejected`: an atomic batch wrote nothing; `failures` lists
    each failed item (`index`, `entityId`, `statusCode`, `code`, `message`)."""

    codes = ("batch_rejected",)

    @property
    def failures(self) -> list[JsonValue]:
        value = self.details.get("failures")
        return value if isinstance(value, list) else []


class RateLimited(ApiError):
    """429: too many requests; `retry_after` is the wait the service asked for, s."""

    status = 429

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers)


class ServerError(ApiError):
    """5xx."""


class Unavailable(ServerError):
    status = 503


_BY_CODE: dict[str, type[ApiError]] = {
    code: kind
    for kind in (InvalidTransition, NoLease, WriteContention, VersionMismatch, BatchRejected)
    for code in kind.codes
}
_BY_STATUS: dict[int, type[ApiError]] = {
    kind.status: kind
    for kind in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        ValidationFailed,
        RateLimited,
        Unavailable,
    )
    if kind.status is not None
}


def error_for(status_code: int, content: bytes, headers: Mapping[str, str]) -> ApiError:
    """The exception for an error answer. A body that is not the service's (a proxy's
    502 page) still gives an error of the right class, with a body made up from the
    status."""
    try:
        body = ErrorBody.model_validate_json(content)
    except ValidationError:
        text = content.decode("utf-8", errors="replace").strip()[:500]
        body = ErrorBody(
            statusCode=status_code,
            error="",
            code="http_error",
            message=text or f"HTTP {status_code}",
        )
    kind = _BY_CODE.get(body.code) or _BY_STATUS.get(status_code)
    if kind is None:
        kind = ServerError if status_code >= 500 else ApiError
    return kind(body, headers)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (the service sends seconds; an HTTP date is ignored)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)
