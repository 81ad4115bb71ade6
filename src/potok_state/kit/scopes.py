"""Scoped API keys: what each key of `API_KEYS` may do (docs/operations.md,
"API keys and scopes").

An entry is `key` or `name:key` (every scope on every entity type, as before
scopes existed) or `name:key:scopes`: scopes joined by `+`, each one of
`read`, `write`, `admin`, optionally limited to entity types with
`@type1|type2`. In `billing:KEY:read+write@invoice|payment` the key reads every
type and writes invoices and payments only. A key therefore never holds a `:`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import SecretStr

from potok_state.names import ENTITY_TYPE_PATTERN


class Scope(StrEnum):
    READ = "read"
    """GET states, history, lists, machines; the change feed and watch streams."""
    WRITE = "write"
    """State writes, heartbeats, batches, custom events."""
    ADMIN = "admin"
    """Webhook subscriptions and deliveries; state-machine definitions."""


Types = frozenset[str] | None
"""The entity types a scope covers; None: every type (and what has no type)."""

_ENTITY_TYPE = re.compile(ENTITY_TYPE_PATTERN)


class InvalidApiKeys(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Grants:
    """The scopes of one key, each on every type or on some types."""

    by_scope: Mapping[Scope, Types] = field(default_factory=dict)

    def allows(self, scope: Scope, entity: str | None) -> bool:
        """May the key use `scope` on `entity` (None: on what has no type, or on
        every type at once)?"""
        if scope not in self.by_scope:
            return False
        types = self.by_scope[scope]
        return types is None or (entity is not None and entity in types)

    def types(self, scope: Scope) -> Types:
        """The types `scope` covers: None for all, empty when not granted."""
        return self.by_scope.get(scope, frozenset())

    def describe(self) -> str:
        """The scopes in API_KEYS syntax (for `potok-state config`)."""
        return "+".join(
            scope.value if types is None else f"{scope.value}@{'|'.join(sorted(types))}"
            for scope, types in self.by_scope.items()
        )


FULL_ACCESS = Grants({scope: None for scope in Scope})


def parse_scopes(text: str) -> Grants:
    """`read+write@invoice|payment` → Grants; InvalidApiKeys naming the problem."""
    by_scope: dict[Scope, Types] = {}
    for item in text.split("+"):
        name, limited, types_text = item.strip().partition("@")
        try:
            scope = Scope(name.strip())
        except ValueError:
            raise InvalidApiKeys(
                f"unknown scope {name.strip()!r} (use read, write, admin, joined by +)"
            ) from None
        types: Types = None
        if limited:
            names = [part.strip() for part in types_text.split("|")]
            bad = [part for part in names if not _ENTITY_TYPE.fullmatch(part)]
            if bad:
                raise InvalidApiKeys(
                    f"scope {scope.value!r} names invalid entity types {bad} "
                    "(lowercase names, e.g. read@invoice|payment)"
                )
            types = frozenset(names)
        if scope in by_scope:
            previous = by_scope[scope]
            types = None if previous is None or types is None else previous | types
        by_scope[scope] = types
    return Grants(by_scope)


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key: SecretStr
    grants: Grants = FULL_ACCESS
    named: bool = True
    """False for a bare `key` entry: its name is made from the key's hash."""


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """Every entry of `API_KEYS`; InvalidApiKeys naming the first bad entry by
    its name (never its key)."""
    keys: list[ApiKey] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        parts = item.split(":", 2)
        if len(parts) == 1:
            key = parts[0]
            name = "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
            keys.append(ApiKey(name, SecretStr(key), named=False))
            continue
        name, key = parts[0].strip(), parts[1].strip()
        if not name or not key:
            raise InvalidApiKeys(
                f"API_KEYS entry {name or '(no name)'!r} needs a name and a key (name:key)"
            )
        if len(parts) == 2:
            keys.append(ApiKey(name, SecretStr(key)))
            continue
        try:
            grants = parse_scopes(parts[2])
        except InvalidApiKeys as exc:
            raise InvalidApiKeys(f"API_KEYS entry {name!r}: {exc}") from None
        keys.append(ApiKey(name, SecretStr(key), grants))
    return tuple(keys)
