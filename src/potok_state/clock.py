"""Timestamps: UTC, millisecond precision, rendered as `2025-11-10T10:00:00.000Z`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer


def utc_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
