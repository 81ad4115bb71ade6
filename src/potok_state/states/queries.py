"""State list queries (`GET /states/{entity}`, README.md "API overview"): the
filter a client sends, checked and turned into the store's query, and the
fingerprint under which the cache keeps its page."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson

from potok_state.cache import list_fingerprint
from potok_state.states.cursors import decode_state_cursor
from potok_state.states.errors import InvalidQuery
from potok_state.storage.port import SortField, StateQuery

MAX_METADATA_FILTERS = 20
MAX_STATUS_FILTERS = 64
METADATA_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True, slots=True)
class StateFilter:
    statuses: tuple[str, ...] = ()
    metadata_equals: Mapping[str, str] | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    sort: str = "-updatedAt"
    limit: int = 50
    cursor: str | None = None


def store_query(entity: str, query: StateFilter) -> StateQuery:
    """The store's query for a filter, one row longer than the page (that row
    only tells that another page follows). InvalidQuery for a sort, a filter
    or a cursor the store cannot take."""
    descending = query.sort.startswith("-")
    try:
        sort = SortField(query.sort.removeprefix("-"))
    except ValueError:
        raise InvalidQuery(
            f"Cannot sort by {query.sort!r}.",
            details={"sortable": [f"{s.value}" for s in SortField]},
        ) from None
    if len(query.metadata_equals or {}) > MAX_METADATA_FILTERS:
        raise InvalidQuery(
            f"At most {MAX_METADATA_FILTERS} metadata.<key> filters per query.",
            details={"limit": MAX_METADATA_FILTERS},
        )
    if len(query.statuses) > MAX_STATUS_FILTERS:
        raise InvalidQuery(
            f"At most {MAX_STATUS_FILTERS} status filters per query.",
            details={"limit": MAX_STATUS_FILTERS},
        )
    metadata_equals: dict[str, tuple[str, ...]] = {}
    for key, value in (query.metadata_equals or {}).items():
        if not key or len(key) > 64 or not set(key) <= METADATA_KEY_CHARS:
            raise InvalidQuery(
                f"metadata.{key} is not a filter: keys are 1-64 of [A-Za-z0-9_-].",
                details={"key": key},
            )
        metadata_equals[key] = _json_text_candidates(value)
    after_key = None
    if query.cursor is not None:
        after_key = decode_state_cursor(query.cursor, query.sort)
    return StateQuery(
        entity=entity,
        statuses=query.statuses,
        metadata_equals=metadata_equals,
        updated_after=query.updated_after,
        updated_before=query.updated_before,
        sort=sort,
        descending=descending,
        after_key=after_key,
        limit=query.limit + 1,
    )


def query_fingerprint(query: StateFilter) -> str:
    """Equal for queries that mean the same (status order and repeats do not matter)."""
    return list_fingerprint(
        [
            sorted(set(query.statuses)),
            sorted((query.metadata_equals or {}).items()),
            query.updated_after.isoformat() if query.updated_after else None,
            query.updated_before.isoformat() if query.updated_before else None,
            query.sort,
            query.limit,
            query.cursor,
        ]
    )


def _json_text_candidates(value: str) -> tuple[str, ...]:
    """A query value matches a metadata string equal to it, or a number, boolean
    or null whose JSON text it is (`?metadata.retries=3` matches 3 and "3")."""
    candidates = [orjson.dumps(value).decode()]
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return tuple(candidates)
    if parsed is None or isinstance(parsed, bool | int | float):
        candidates.append(value)
    return tuple(candidates)
