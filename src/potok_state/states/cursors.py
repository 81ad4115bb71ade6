"""Page cursors: opaque to clients, base64url of what the next page starts
after. A state list's cursor carries its sort order and the sort value and id
of the last row; a history's, the last revision. Decoding checks every part
against the column it is bound to, so a forged cursor is a 422, never a
database error."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

import orjson

from potok_state.clock import as_utc
from potok_state.states.errors import InvalidQuery
from potok_state.storage.port import ListedState, SortField


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_state_cursor(state: ListedState, sort: SortField, sort_spec: str) -> str:
    value: str | int
    match sort:
        case SortField.ENTITY_ID:
            value = state.entity_id
        case SortField.CREATED_AT:
            value = state.created_at
        case SortField.UPDATED_AT:
            value = state.revision
        case SortField.STATUS:
            value = state.status
        case SortField.VERSION:
            value = state.version
    return _b64(orjson.dumps([sort_spec, value, state.entity_id]))


def decode_state_cursor(cursor: str, sort_spec: str) -> tuple[str | int | datetime, str]:
    try:
        spec, value, entity_id = orjson.loads(_unb64(cursor))
        if spec != sort_spec:
            raise InvalidQuery(
                "This cursor belongs to a query with another sort order.",
                details={"cursorSort": str(spec), "sort": sort_spec},
            )
        if not isinstance(entity_id, str) or "\x00" in entity_id:
            raise ValueError(cursor)
        # The value is bound against the sort column, so its type and range must
        # fit that column: a mismatch is bad input, not a database error.
        match SortField(sort_spec.removeprefix("-")):
            case SortField.UPDATED_AT | SortField.VERSION as field:
                limit = 2**63 if field is SortField.UPDATED_AT else 2**31
                if type(value) is not int or not 0 <= value < limit:
                    raise ValueError(cursor)
                return value, entity_id
            case SortField.CREATED_AT:
                if not isinstance(value, str):
                    raise ValueError(cursor)
                return as_utc(datetime.fromisoformat(value)), entity_id
            case _:
                if not isinstance(value, str) or "\x00" in value:
                    raise ValueError(cursor)
                return value, entity_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidQuery("The cursor is not valid.", details={"cursor": cursor}) from None


def encode_revision_cursor(revision: int) -> str:
    return _b64(str(revision).encode())


def decode_revision_cursor(cursor: str) -> int:
    try:
        revision = int(_unb64(cursor).decode())
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidQuery("The cursor is not valid.", details={"cursor": cursor}) from None
    # Revisions are BIGINT; a larger number would fail in the driver, not here.
    if not 0 <= revision < 2**63:
        raise InvalidQuery("The cursor is not valid.", details={"cursor": cursor})
    return revision
