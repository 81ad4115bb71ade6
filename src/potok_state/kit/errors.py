"""One error hierarchy and one renderer for the error body of docs/operations.md."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import JsonValue
from starlette.exceptions import HTTPException as StarletteHTTPException

from potok_state.kit.error_body import ErrorBody
from potok_state.logging import current_request_id


class ServiceError(Exception):
    """Base of every error the service answers on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, JsonValue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers


class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PreconditionFailed(ServiceError):
    status_code = 412
    code = "precondition_failed"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class InvalidInput(ServiceError):
    status_code = 422
    code = "validation_error"


class TooManyRequests(ServiceError):
    status_code = 429
    code = "rate_limited"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: dict[str, JsonValue] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        statusCode=status_code,
        error=HTTPStatus(status_code).phrase,
        code=code,
        message=message,
        details=details or {},
        requestId=current_request_id(),
    )
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _error_statuses(errors: tuple[type[ServiceError], ...]) -> list[int]:
    """The statuses of these errors and those every authenticated route may answer."""
    return sorted({e.status_code for e in errors} | {401, 403, 422, 429})


def error_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` entry declaring the error body for each status."""
    return {
        status: {"model": ErrorBody, "description": HTTPStatus(status).phrase}
        for status in _error_statuses(errors)
    }


def json_error_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, object]]:
    """As `error_responses`, for a route whose own responses are not JSON (an event
    stream): FastAPI would document a `model` under the route's media type."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {
        status: {"description": HTTPStatus(status).phrase, "content": content}
        for status in _error_statuses(errors)
    }


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "model_type"})

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _naming_the_field(errors: Sequence[Any]) -> str:
    """The message of a 422: the first field at fault (`body.ttl`) and why."""
    if not errors:
        return "The request is not valid."
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "the request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"The request is not valid: {where}: {first.get('msg', 'invalid')}{more}."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if not (media == "application/json" or media.endswith("+json")) and any(
            tuple(err.get("loc", ())) == ("body",) and err.get("type") in _NOT_AN_OBJECT
            for err in exc.errors()
        ):
            # The body was not read as JSON at all: say why, not that bytes are
            # not a dictionary.
            return error_response(
                422,
                "not_json",
                "Send the body as JSON with Content-Type: application/json "
                f"(got {media or 'no Content-Type'}).",
                {"contentType": media or None},
            )
        problems: list[JsonValue] = [
            {
                "location": [str(part) for part in err.get("loc", ())],
                "message": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        return error_response(
            422, "validation_error", _naming_the_field(exc.errors()), {"errors": problems}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, message, headers=headers)
