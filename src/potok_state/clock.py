"""Timestamps: UTC, millisecond precision, rendered as `2025-11-10T10:00:00.000Z`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError


def utc_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(value: datetime) -> datetime:
    """The same instant in UTC (a naive time is taken as UTC). ValueError when
    it is not representable there (0001-01-01T00:00:00+14:00)."""
    if value.tzinfo is UTC:
        return value
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is outside the years 1 to 9999 in UTC") from None


InputTime = Annotated[datetime, AfterValidator(as_utc)]
"""A time given by a client: read in UTC, or a 422 when UTC cannot hold it."""

_TIME = TypeAdapter(datetime)


def _rfc3339_text(value: object) -> object:
    """A time in a JSON body is a string, read as strict JSON validation reads
    it (RFC 3339 date and time; a bare date or a number is refused)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "Input should be an RFC 3339 date-time string")
    try:
        return _TIME.validate_strings(value, strict=True)
    except ValidationError as exc:
        [error] = exc.errors()
        raise PydanticCustomError(
            "datetime_parsing",
            "Input should be an RFC 3339 date-time string, {error}",
            {"error": error.get("ctx", {}).get("error", error["msg"])},
        ) from None


BodyTime = Annotated[
    datetime, BeforeValidator(_rfc3339_text), Strict(False), AfterValidator(as_utc)
]
"""A time in a request body (`RequestModel`, strict): an RFC 3339 string, read in UTC."""


_last_formatted: tuple[datetime | None, str] = (None, "")


def format_timestamp(value: datetime) -> str:
    global _last_formatted
    # The changes of one commit share one time: format it once.
    if _last_formatted[0] is value:
        return _last_formatted[1]
    # isoformat truncates to milliseconds and always ends in "+00:00" for UTC.
    text = as_utc(value).isoformat(timespec="milliseconds")[:-6] + "Z"
    _last_formatted = (value, text)
    return text


Timestamp = Annotated[
    datetime, PlainSerializer(format_timestamp, return_type=str, when_used="json")
]
