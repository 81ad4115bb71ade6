"""Declarative transition tables per entity type (docs/data-model.md, "Transition tables").

Built-in tables cover `task`, `user`, `process` and `service`; a YAML file
(`STATE_MACHINES_FILE`) overrides or extends them. Tables are checked when they
load, so a broken table stops startup with a message that names the problem
instead of misbehaving later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ANY = "*"
DELETE = "delete"
MAX_LEASE_TTL = 30 * 86_400
STATUS_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ENTITY_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class MachineDefinitionError(ValueError):
    """A transition table that cannot be loaded; the message names the problem."""


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


def build_machine(entity: str, definition: object) -> StateMachine:
    if not ENTITY_PATTERN.match(entity):
        raise MachineDefinitionError(f"{entity!r}: not a valid entity type name")
    if not isinstance(definition, dict):
        raise MachineDefinitionError(f"{entity}: the table must be a mapping")
    extra = set(definition) - {"statuses", "initial", "transitions", "final", "lease"}
    if extra:
        raise MachineDefinitionError(f"{entity}: unknown key(s) {', '.join(sorted(extra))}")
    raw_statuses = definition.get("statuses")
    if not isinstance(raw_statuses, list) or not raw_statuses:
        raise MachineDefinitionError(f"{entity}: 'statuses' must be a non-empty list")
    for status in raw_statuses:
        if not isinstance(status, str) or not STATUS_PATTERN.match(status):
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
        for source, targets in raw_transitions.items():
            if source not in statuses:
                raise MachineDefinitionError(
                    f"{entity}: transitions from unknown status {source!r}"
                )
            transitions[source] = _status_list(entity, f"transitions.{source}", targets, statuses)
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
    machine = StateMachine(entity, statuses, initial, transitions, final)
    if "lease" in definition:
        machine = StateMachine(
            entity, statuses, initial, transitions, final, _lease(machine, definition["lease"])
        )
    return machine


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
    def __init__(self, machines: Iterable[StateMachine], *, strict: bool) -> None:
        self._machines = {machine.entity: machine for machine in machines}
        self.strict = strict

    def get(self, entity: str) -> StateMachine | None:
        return self._machines.get(entity)

    def all(self) -> list[StateMachine]:
        return [self._machines[name] for name in sorted(self._machines)]


def load_machines(path: str | None, *, strict: bool) -> MachineRegistry:
    definitions: dict[str, object] = dict(BUILT_IN)
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
    return MachineRegistry(
        (build_machine(entity, definition) for entity, definition in definitions.items()),
        strict=strict,
    )
