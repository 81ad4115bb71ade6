"""What differs between SQLite and PostgreSQL, in one object per database.

Statements are written once in PostgreSQL's style (`$1` placeholders) and
`Dialect.sql` turns them into SQLite's numbered `?1` form. Values that the two
drivers store differently pass through the dialect: timestamps (SQLite keeps
the text `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, the format the schema's
migrations and older releases wrote; PostgreSQL `timestamptz`) and booleans
(SQLite integers). JSON travels as text on both: orjson's output in, the
stored text out.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

import orjson

_PLACEHOLDER = re.compile(r"\$(\d+)")


class Dialect:
    name: str
    for_update: str
    """Appended to a SELECT that locks the rows it reads (nothing on SQLite,
    where the single writer holds the database lock)."""
    skip_locked: str

    def sql(self, text: str) -> str:
        return text

    def time(self, value: datetime) -> object:
        return value

    def read_time(self, value: object) -> datetime:
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def read_bool(self, value: object) -> bool:
        return bool(value)

    def refresh_statistics(self, table: str) -> str | None:
        """A statement that refreshes the planner's statistics of `table`, if
        the database keeps any."""
        return None

    def json_field_text(self, column: str, key_param: str) -> str:
        """SQL for the JSON text of one top-level field of a JSON column
        (`"high"`, `5`, `true`), the key given as a bound parameter."""
        raise NotImplementedError

    def in_list(self, param: str) -> str:
        """`IN` over a list of strings bound as one parameter (see `text_list`)."""
        raise NotImplementedError

    def api_time(self, column: str) -> str:
        """SQL for a timestamp column as the API writes it: 2025-11-10T10:00:00.000Z."""
        raise NotImplementedError

    def page_with_head(self, columns: str, where: str, order: str, limit: str) -> str:
        """One statement, so one snapshot: the `states` rows of a page (`columns`
        of the rows matching `where`, in `order`, at most `limit`) each followed
        by the revision counter's value, or a single row of NULLs and that value
        when the page is empty."""
        raise NotImplementedError

    def json_text(self, column: str) -> str:
        """SQL for a JSON column as JSON text."""
        return column

    def not_in_list(self, param: str) -> str:
        raise NotImplementedError

    def text_list(self, values: list[str]) -> object:
        return values

    def in_ints(self, param: str) -> str:
        """`IN` over a list of integers bound as one parameter (see `int_list`)."""
        raise NotImplementedError

    def int_list(self, values: list[int]) -> object:
        return values


class SqliteDialect(Dialect):
    name = "sqlite"
    for_update = ""
    skip_locked = ""

    def sql(self, text: str) -> str:
        return _sqlite_sql(text)

    def time(self, value: datetime) -> object:
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def read_time(self, value: object) -> datetime:
        assert isinstance(value, str)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def json_field_text(self, column: str, key_param: str) -> str:
        return f"({column} -> ('$.\"' || {key_param} || '\"'))"

    def in_list(self, param: str) -> str:
        return f"IN (SELECT value FROM json_each({param}))"

    def api_time(self, column: str) -> str:
        # Stored as `YYYY-MM-DD HH:MM:SS.ffffff`.
        return f"(substr({column}, 1, 10) || 'T' || substr({column}, 12, 12) || 'Z')"

    def page_with_head(self, columns: str, where: str, order: str, limit: str) -> str:
        # Joined to the one counter row, a page in an index's order (revision,
        # the default; entity id) is read along it with no sort after it, and
        # only the rows sent are formatted: 122 -> 102 us for 50 of 1,000. A sort
        # no index serves (status, version) formats every matching row before
        # sorting, about 50 us more per 1,000 rows.
        return (
            f"SELECT {columns}, head.value FROM revision_counter AS head "
            f"LEFT JOIN states ON {where} WHERE head.id = 1 {order} LIMIT {limit}"
        )

    def not_in_list(self, param: str) -> str:
        return f"NOT IN (SELECT value FROM json_each({param}))"

    def text_list(self, values: list[str]) -> object:
        return orjson.dumps(values).decode()

    def in_ints(self, param: str) -> str:
        return f"IN (SELECT value FROM json_each({param}))"

    def int_list(self, values: list[int]) -> object:
        return orjson.dumps(values).decode()


class PostgresDialect(Dialect):
    name = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def json_field_text(self, column: str, key_param: str) -> str:
        return f"(({column}) -> ({key_param}::text))::text"

    def in_list(self, param: str) -> str:
        return f"= ANY({param}::text[])"

    def api_time(self, column: str) -> str:
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""

    def page_with_head(self, columns: str, where: str, order: str, limit: str) -> str:
        # The page is chosen first and formatted after: PostgreSQL sorts a join's
        # rows itself and computes the select list of every row it sorts (1,333
        # rows formatted for 51 sent).
        return (
            f"SELECT {columns}, head.value FROM revision_counter AS head LEFT JOIN "
            f"(SELECT * FROM states WHERE {where} {order} LIMIT {limit}) AS states "
            f"ON 1 = 1 WHERE head.id = 1 {order}"
        )

    def json_text(self, column: str) -> str:
        return f"{column}::text"

    def refresh_statistics(self, table: str) -> str | None:
        return f"ANALYZE {table}"

    def not_in_list(self, param: str) -> str:
        return f"<> ALL({param}::text[])"

    def in_ints(self, param: str) -> str:
        return f"= ANY({param}::bigint[])"


@lru_cache(maxsize=512)
def _sqlite_sql(text: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", text)


SQLITE = SqliteDialect()
POSTGRES = PostgresDialect()
