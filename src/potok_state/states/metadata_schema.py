"""A type's `metadataSchema` (docs/data-model.md, "Metadata schemas"): a JSON
Schema (draft 2020-12) checked when the definition is given and compiled once,
then enforced on every write of the type that gives metadata.

Validation is the `jsonschema` library's, with its format checker (the formats
it checks are listed in the docs); every error is reported with the JSON
pointer of the failing value. References may only point inside the schema
(`#…`): nothing is ever fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from pydantic import JsonValue
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from potok_state.kit.errors import InvalidInput

# Errors listed in one answer; a reason is cut to this many characters (a
# message may quote the whole failing value).
MAX_REPORTED_ERRORS = 50
MAX_REASON_CHARS = 300
# Keywords whose values are data, not schemas: a `$ref` key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_REFERENCES = ("$ref", "$dynamicRef")


class InvalidMetadataSchema(ValueError):
    """A `metadataSchema` that cannot be used; the message names the problem."""


class MetadataInvalid(InvalidInput):
    code = "metadata_invalid"


class MetadataSchema:
    """One compiled schema. `document` is the schema as given."""

    __slots__ = ("_validator", "document")

    def __init__(self, document: dict[str, JsonValue]) -> None:
        try:
            Draft202012Validator.check_schema(document)
        except SchemaError as error:
            where = pointer(error.absolute_path) or "the schema"
            raise InvalidMetadataSchema(
                f"metadataSchema is not a valid JSON Schema (draft 2020-12) at {where}: "
                f"{_cut(error.message)}"
            ) from None
        except RecursionError:
            raise InvalidMetadataSchema("metadataSchema nests too deeply") from None
        _check_references(document)
        self.document = document
        self._validator = Draft202012Validator(
            document, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def check(self, metadata: dict[str, JsonValue]) -> None:
        """Raise `MetadataInvalid` listing every failing value of `metadata`."""
        try:
            errors = list(_first(self._validator.iter_errors(metadata), MAX_REPORTED_ERRORS + 1))
        except RecursionError:
            raise MetadataInvalid(
                "metadata nests too deeply to be checked against the type's metadataSchema.",
                details={"errors": []},
            ) from None
        except Unresolvable as error:  # a reference the definition check could not see
            raise MetadataInvalid(
                f"the type's metadataSchema has a reference that cannot be resolved: {error}.",
                details={"errors": []},
            ) from None
        if not errors:
            return
        listed: list[JsonValue] = [
            {"pointer": pointer(error.absolute_path), "reason": _cut(error.message)}
            for error in errors[:MAX_REPORTED_ERRORS]
        ]
        first = listed[0]
        assert isinstance(first, dict)
        where = first["pointer"] or "the metadata"
        raise MetadataInvalid(
            f"metadata does not match the type's metadataSchema: {where}: {first['reason']}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
            + ".",
            details={"errors": listed, "truncated": len(errors) > MAX_REPORTED_ERRORS},
        )


def pointer(path: Iterable[str | int]) -> str:
    """A JSON pointer (RFC 6901) for a path of keys and indexes; "" is the root."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _first(errors: Iterator[ValidationError], count: int) -> Iterator[ValidationError]:
    for index, error in enumerate(errors):
        if index >= count:
            return
        yield error


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _check_references(document: dict[str, JsonValue]) -> None:
    """Every `$ref` points inside the schema and resolves there."""
    resolver = Registry().resolver_with_root(DRAFT202012.create_resource(document))
    for path, reference in _references(document, ()):
        if not reference.startswith("#"):
            raise InvalidMetadataSchema(
                f"metadataSchema at {pointer(path)}: {reference!r} points outside the schema; "
                "only references within it (#…) are allowed"
            )
        try:
            resolver.lookup(reference)
        except Unresolvable:
            raise InvalidMetadataSchema(
                f"metadataSchema at {pointer(path)}: {reference!r} does not resolve within "
                "the schema"
            ) from None


Path = tuple[str | int, ...]


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
