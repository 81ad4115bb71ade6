"""Declarative transition tables per entity type (docs/data-model.md, "Transition tables").

Built-in tables cover `task`, `user`, `process` and `service`; a YAML file
(`STATE_MACHINES_FILE`) overrides or extends them, and types may be defined
over the API (`PUT /state-machines/{entity}`, stored in the database). Every
table, wherever it comes from, is checked by `build_machine`: a broken file
stops startup with a message that names the problem, a broken definition sent
to the API is a 422 with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import JsonValue

from potok_state.names import ENTITY_TYPE_PATTERN, STATUS_PATTERN

if TYPE_CHECKING:
    from potok_state.states.metadata_schema import MetadataSchema


ANY = "*"
DELETE = "delete"
MAX_LEASE_TTL = 30 * 86_400
_STATUS = re.compile(STATUS_PATTERN)
_ENTITY_TYPE = re.compile(ENTITY_TYPE_PATTERN)


TABLE_KEYS = frozenset({"statuses", "initial", "transitions", "final", "lease", "metadataSchema"})


class MachineDefinitionError(ValueError):
    """A transition table that cannot be loaded; the message names the problem."""


class MachineSource(StrEnum):
    """Where a type's table comes from; only `api` tables change through the API."""

    BUILTIN = "builtin"
    FILE = "file"
    API = "api"


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """A type's lease policy (docs/leases.md): new states hold a lease of `ttl`
    seconds (None: only when a write asks for one); when a lease lapses the state
    goes to `on_expire` (None: it is deleted)."""

    ttl: int | None
    on_expire: str | None


@dataclass(frozen=True, slots=True)
class StateMachine:
    entity: str
    statuses: tuple[str, ...]
    initial: tuple[str, ...]
    transitions: Mapping[str, tuple[str, ...]]
    final: tuple[str, ...]
    lease: LeasePolicy | None = None
    metadata_schema: MetadataSchema | None = None
    source: MachineSource = MachineSource.BUILTIN
    version: int | None = None
    """The definition's version: API-defined types only."""

    def allows_initial(self, status: str) -> bool:
        return status in self.initial

    def allowed_from(self, status: str) -> tuple[str, ...]:
        return self.transitions.get(status, ())

    def allows(self, current: str, new: str) -> bool:
        # Keeping the status (a metadata-only change) is always allowed.
        return new == current or new in self.allowed_from(current)


def _status_list(
    entity: str, field: str, value: object, statuses: tuple[str, ...]
) -> tuple[str, ...]:
    if value == ANY:
        return statuses
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MachineDefinitionError(
            f"{entity}: '{field}' must be a list of statuses or \"*\", got {value!r}"
        )
    unknown = [item for item in value if item not in statuses]
    if unknown:
        raise MachineDefinitionError(
            f"{entity}: '{field}' names unknown status(es) {', '.join(unknown)}"
        )
    return tuple(dict.fromkeys(value))


def build_machine(
    entity: str,
    definition: object,
    *,
    source: MachineSource = MachineSource.BUILTIN,
    version: int | None = None,
) -> StateMachine:
    if not _ENTITY_TYPE.match(entity):
        raise MachineDefinitionError(f"{entity!r}: not a valid entity type name")
    if not isinstance(definition, dict):
        raise MachineDefinitionError(f"{entity}: the table must be a mapping")
    extra = set(definition) - TABLE_KEYS
    if extra:
        raise MachineDefinitionError(f"{entity}: unknown key(s) {', '.join(sorted(extra))}")
    raw_statuses = definition.get("statuses")
    if not isinstance(raw_statuses, list) or not raw_statuses:
        raise MachineDefinitionError(f"{entity}: 'statuses' must be a non-empty list")
    for status in raw_statuses:
        if not isinstance(status, str) or not _STATUS.match(status):
            raise MachineDefinitionError(f"{entity}: {status!r} is not a valid status name")
    if len(set(raw_statuses)) != len(raw_statuses):
        raise MachineDefinitionError(f"{entity}: 'statuses' lists a status twice")
    statuses = tuple(raw_statuses)
    initial = _status_list(entity, "initial", definition.get("initial", ANY), statuses)
    if not initial:
        raise MachineDefinitionError(f"{entity}: 'initial' must name at least one status")

    raw_transitions = definition.get("transitions", {})
    transitions: dict[str, tuple[str, ...]] = {}
    if raw_transitions == ANY:
        transitions = {status: statuses for status in statuses}
    elif isinstance(raw_transitions, dict):
        for origin, targets in raw_transitions.items():
            if origin not in statuses:
                raise MachineDefinitionError(
                    f"{entity}: transitions from unknown status {origin!r}"
                )
            transitions[origin] = _status_list(entity, f"transitions.{origin}", targets, statuses)
    else:
        raise MachineDefinitionError(
            f"{entity}: 'transitions' must map a status to a list of statuses, or be \"*\""
        )

    final = tuple(s for s in statuses if not transitions.get(s))
    if "final" in definition:
        declared = _status_list(entity, "final", definition["final"], statuses)
        leaving = [s for s in declared if transitions.get(s)]
        if leaving:
            raise MachineDefinitionError(
                f"{entity}: final status(es) {', '.join(leaving)} have outgoing transitions"
            )
        final = declared

    reachable = set(initial)
    frontier = list(initial)
    while frontier:
        for target in transitions.get(frontier.pop(), ()):
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    unreachable = [s for s in statuses if s not in reachable]
    if unreachable:
        raise MachineDefinitionError(
            f"{entity}: status(es) {', '.join(unreachable)} "
            "cannot be reached from an initial status"
        )
    machine = StateMachine(
        entity, statuses, initial, transitions, final, source=source, version=version
    )
    if "lease" in definition:
        machine = replace(machine, lease=_lease(machine, definition["lease"]))
    if definition.get("metadataSchema") is not None:
        machine = replace(
            machine, metadata_schema=_metadata_schema(entity, definition["metadataSchema"])
        )
    return machine


def _metadata_schema(entity: str, value: object) -> MetadataSchema:
    # Imported here: the wire models (states/schemas.py, which the Python client
    # loads) import this module, and the validator is server code.
    from potok_state.states.metadata_schema import InvalidMetadataSchema, MetadataSchema

    if not isinstance(value, dict):
        raise MachineDefinitionError(f"{entity}: 'metadataSchema' must be a JSON Schema object")
    try:
        return MetadataSchema(value)
    except InvalidMetadataSchema as exc:
        raise MachineDefinitionError(f"{entity}: {exc}") from None


def machine_table(machine: StateMachine) -> dict[str, JsonValue]:
    """The table as `build_machine` takes it back and the API shows it: every
    list spelled out, `final` and the lease default included."""
    table: dict[str, JsonValue] = {
        "statuses": list(machine.statuses),
        "initial": list(machine.initial),
        "final": list(machine.final),
        "transitions": {source: list(targets) for source, targets in machine.transitions.items()},
    }
    if machine.lease is not None:
        table["lease"] = {"ttl": machine.lease.ttl, "onExpire": machine.lease.on_expire or DELETE}
    if machine.metadata_schema is not None:
        table["metadataSchema"] = machine.metadata_schema.document
    return table


def _lease(machine: StateMachine, value: object) -> LeasePolicy:
    entity = machine.entity
    if not isinstance(value, dict) or set(value) - {"ttl", "onExpire"}:
        raise MachineDefinitionError(f"{entity}: 'lease' must be {{ttl: <seconds>, onExpire: …}}")
    # Without a ttl, states take a lease only when a write asks for one.
    ttl = value.get("ttl")
    if ttl is not None and (
        not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_LEASE_TTL
    ):
        raise MachineDefinitionError(
            f"{entity}: lease.ttl must be a whole number of seconds, 1 to {MAX_LEASE_TTL}"
        )
    on_expire = value.get("onExpire", DELETE)
    if on_expire == DELETE:
        return LeasePolicy(ttl, None)
    if on_expire not in machine.statuses:
        raise MachineDefinitionError(
            f'{entity}: lease.onExpire must be one of its statuses or "delete", got {on_expire!r}'
        )
    stuck = [
        status
        for status in machine.statuses
        if status not in machine.final and not machine.allows(status, on_expire)
    ]
    if stuck:
        raise MachineDefinitionError(
            f"{entity}: lease.onExpire {on_expire!r} cannot be reached from {', '.join(stuck)}"
        )
    return LeasePolicy(ttl, on_expire)


BUILT_IN: dict[str, object] = {
    "task": {
        "statuses": ["created", "in_progress", "completed", "failed"],
        "initial": ["created", "in_progress"],
        "transitions": {
            "created": ["in_progress", "failed"],
            "in_progress": ["completed", "failed"],
            "failed": ["in_progress"],
        },
    },
    # Presence: a user holds a lease only when a write asks for one (ttl), and goes
    # offline when it lapses.
    "user": {
        "statuses": ["online", "offline", "busy"],
        "initial": ANY,
        "transitions": ANY,
        "lease": {"onExpire": "offline"},
    },
    "process": {
        "statuses": ["pending", "running", "finished"],
        "initial": ["pending"],
        "transitions": {"pending": ["running"], "running": ["finished"]},
    },
    # Service discovery: instances register, heartbeat, and go down by themselves
    # when they stop heartbeating.
    "service": {
        "statuses": ["starting", "up", "draining", "down"],
        "initial": ["starting", "up"],
        "transitions": {
            "starting": ["up", "down"],
            "up": ["draining", "down"],
            "draining": ["up", "down"],
            "down": ["starting", "up"],
        },
        "lease": {"ttl": 15, "onExpire": "down"},
    },
}


class MachineRegistry:
    """The tables in force in this process: the built-in and file tables, fixed
    at start, and the API definitions, which change while it runs. A type the
    file or the built-in set defines keeps that table (an API definition of it
    stays stored, unused)."""

    def __init__(self, machines: Iterable[StateMachine], *, strict: bool) -> None:
        self._fixed = {machine.entity: machine for machine in machines}
        self._defined: dict[str, tuple[int, StateMachine | None]] = {}
        self._machines = dict(self._fixed)
        self.strict = strict

    def get(self, entity: str) -> StateMachine | None:
        return self._machines.get(entity)

    def all(self) -> list[StateMachine]:
        return [self._machines[name] for name in sorted(self._machines)]

    def fixed(self, entity: str) -> StateMachine | None:
        """The built-in or file table of `entity`, which the API cannot change."""
        return self._fixed.get(entity)

    def known_version(self, entity: str) -> int:
        """The newest definition version of `entity` this process has taken (0: none)."""
        known = self._defined.get(entity)
        return 0 if known is None else known[0]

    def take(self, entity: str, version: int, machine: StateMachine | None) -> bool:
        """Take version `version` of an API definition (None: it was removed),
        unless this process already has that version or a newer one: versions
        only move forward, whichever way (the answer of a PUT, a reload) they
        arrive. True when taken."""
        if self.known_version(entity) >= version:
            return False
        self._defined[entity] = (version, machine)
        if entity in self._fixed:
            return True
        if machine is None:
            self._machines.pop(entity, None)
        else:
            self._machines[entity] = machine
        return True


def load_machines(path: str | None, *, strict: bool) -> MachineRegistry:
    definitions: dict[str, object] = dict(BUILT_IN)
    sources: dict[str, MachineSource] = {}
    if path:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MachineDefinitionError(f"cannot read STATE_MACHINES_FILE {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise MachineDefinitionError(
                f"STATE_MACHINES_FILE {path} is not valid YAML: {exc}"
            ) from exc
        tables = loaded.get("machines") if isinstance(loaded, dict) else None
        if not isinstance(tables, dict):
            raise MachineDefinitionError(
                f"STATE_MACHINES_FILE {path}: expected a top-level 'machines:' mapping"
            )
        for entity, definition in tables.items():
            definitions[str(entity)] = definition
            sources[str(entity)] = MachineSource.FILE
    return MachineRegistry(
        (
            build_machine(entity, definition, source=sources.get(entity, MachineSource.BUILTIN))
            for entity, definition in definitions.items()
        ),
        strict=strict,
    )
