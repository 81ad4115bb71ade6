"""A type's `metadataSchema` (docs/data-model.md, "Metadata schemas"): a JSON
Schema (draft 2020-12) checked when the definition is given and compiled once,
then enforced on every write of the type that gives metadata.

The validator is `jsonschema-rs` (the Rust implementation behind a Python
API), with format validation on: a write pays about a microsecond for a
10-property schema, where the pure-Python `jsonschema` took 50–110 µs, more than
the tenth of a PUT's cost the goal allows (bench/README.md, `put_schema`). Every error is
reported with the JSON pointer of the failing value. References may only point
inside the schema (`#…`), and the validator runs offline: nothing is ever
fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jsonschema_rs
from pydantic import JsonValue

from potok_state.kit.errors import InvalidInput

# Errors listed in one answer; a reason is cut to this many characters (a
# message may quote the whole failing value).
MAX_REPORTED_ERRORS = 50
MAX_REASON_CHARS = 300
# Keywords whose values are data, not schemas: a `$ref` key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_REFERENCES = ("$ref", "$dynamicRef")

Path = tuple[str | int, ...]


class InvalidMetadataSchema(ValueError):
    """A `metadataSchema` that cannot be used; the message names the problem."""


class MetadataInvalid(InvalidInput):
    code = "metadata_invalid"


class MetadataSchema:
    """One compiled schema. `document` is the schema as given."""

    __slots__ = ("_validator", "document")

    def __init__(self, document: dict[str, JsonValue]) -> None:
        try:
            jsonschema_rs.meta.validate(document)
        except jsonschema_rs.ValidationError as error:
            where = pointer(error.instance_path) or "the schema"
            raise InvalidMetadataSchema(
                f"metadataSchema is not a valid JSON Schema (draft 2020-12) at {where}: "
                f"{_cut(error.message)}"
            ) from None
        except ValueError as error:  # nesting beyond what the checker follows
            raise InvalidMetadataSchema(f"metadataSchema cannot be checked: {error}") from None
        _check_references(document)
        try:
            self._validator = jsonschema_rs.Draft202012Validator(
                document, validate_formats=True, offline=True
            )
        except ValueError as error:  # a reference that does not resolve, a bad pattern
            message = getattr(error, "message", None) or str(error).split("\n", 1)[0]
            raise InvalidMetadataSchema(f"metadataSchema cannot be used: {_cut(message)}") from None
        self.document = document

    def check(self, metadata: dict[str, JsonValue]) -> None:
        """Raise `MetadataInvalid` listing every failing value of `metadata`."""
        if self._validator.is_valid(metadata):
            return
        errors = list(_first(self._validator.iter_errors(metadata), MAX_REPORTED_ERRORS + 1))
        listed: list[JsonValue] = [
            {"pointer": pointer(error.instance_path), "reason": _cut(error.message)}
            for error in errors[:MAX_REPORTED_ERRORS]
        ]
        first = errors[0]
        where = pointer(first.instance_path) or "the metadata"
        raise MetadataInvalid(
            f"metadata does not match the type's metadataSchema: {where}: {_cut(first.message)}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
            + ".",
            details={"errors": listed, "truncated": len(errors) > MAX_REPORTED_ERRORS},
        )


def pointer(path: Iterable[str | int]) -> str:
    """A JSON pointer (RFC 6901) for a path of keys and indexes; "" is the root."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _first(
    errors: Iterator[jsonschema_rs.ValidationError], count: int
) -> Iterator[jsonschema_rs.ValidationError]:
    for index, error in enumerate(errors):
        if index >= count:
            return
        yield error


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _check_references(document: dict[str, JsonValue]) -> None:
    """Every `$ref` points inside the schema (whether it resolves there, the
    validator checks as it compiles)."""
    for path, reference in _references(document, ()):
        if not reference.startswith("#"):
            raise InvalidMetadataSchema(
                f"metadataSchema at {pointer(path)}: {reference!r} points outside the schema; "
                "only references within it (#…) are allowed"
            )


def _references(node: JsonValue, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REFERENCES and isinstance(value, str):
                yield (*path, key), value
            elif key not in _DATA_KEYWORDS:
                yield from _references(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _references(value, (*path, index))
