"""Wire models of the state-machines API (docs/data-model.md, "Definitions over
the API"): a type's table as GET shows it, the definition PUT takes, and its history."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from potok_state.clock import Timestamp
from potok_state.kit.request_model import RequestModel
from potok_state.states.machines import DELETE, MAX_LEASE_TTL, StateMachine
from potok_state.states.schemas import EntityType, Status


class LeasePolicyView(BaseModel):
    ttl: int | None = Field(
        description="Lease length new states of this type get, s; null: a state takes a lease "
        "only when a write asks for one (ttl)."
    )
    onExpire: str = Field(
        description='The status a state goes to when its lease lapses, or "delete".'
    )


MachineSourceName = Literal["builtin", "file", "api"]
# A JSON Schema (draft 2020-12), as given.
JsonSchemaDocument = dict[str, JsonValue]

_ORDER_TABLE: dict[str, JsonValue] = {
    "statuses": ["new", "paid", "shipped", "cancelled"],
    "initial": ["new"],
    "final": ["shipped", "cancelled"],
    "transitions": {"new": ["paid", "cancelled"], "paid": ["shipped", "cancelled"]},
    "metadataSchema": {
        "type": "object",
        "properties": {
            "amount": {"type": "integer", "minimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
        "required": ["amount"],
    },
}


class StateMachineView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entity": "task",
                    "statuses": ["created", "in_progress", "completed", "failed"],
                    "initial": ["created", "in_progress"],
                    "final": ["completed"],
                    "transitions": {
                        "created": ["in_progress", "failed"],
                        "in_progress": ["completed", "failed"],
                        "failed": ["in_progress"],
                    },
                    "source": "builtin",
                },
                {"entity": "order", **_ORDER_TABLE, "source": "api", "version": 1},
            ]
        }
    )

    entity: str = Field(description="Entity type.")
    statuses: list[str] = Field(description="Every status of the type.")
    initial: list[str] = Field(description="Statuses a new state may start in.")
    final: list[str] = Field(description="Statuses with no way out.")
    transitions: dict[str, list[str]] = Field(
        description="For each status, the statuses it may move to."
    )
    lease: LeasePolicyView | None = Field(
        None, description="Its lease policy: the lease new states get, and where a lapse goes."
    )

    metadataSchema: JsonSchemaDocument | None = Field(
        None, description="The JSON Schema (draft 2020-12) every write's metadata must match."
    )
    source: MachineSourceName = Field(
        description="`builtin`, `file` (STATE_MACHINES_FILE): read-only through the API; "
        "`api`: defined with PUT."
    )
    version: int | None = Field(
        None,
        description="The definition's version (also its ETag, for If-Match); "
        "types defined over the API only.",
    )

    @classmethod
    def of(cls, machine: StateMachine) -> StateMachineView:
        lease = machine.lease
        schema = machine.metadata_schema
        return cls(
            entity=machine.entity,
            statuses=list(machine.statuses),
            initial=list(machine.initial),
            final=list(machine.final),
            transitions={source: list(targets) for source, targets in machine.transitions.items()},
            lease=None
            if lease is None
            else LeasePolicyView(ttl=lease.ttl, onExpire=lease.on_expire or DELETE),
            metadataSchema=None if schema is None else schema.document,
            source=machine.source.value,
            version=machine.version,
        )


class DefinedMachine(BaseModel):
    """The answer to a PUT of a definition, as kept for an Idempotency-Key."""

    machine: StateMachineView
    created: bool
    changed: bool


class RemovedMachine(BaseModel):
    """The answer to a DELETE of a definition, as kept for an Idempotency-Key."""

    entity: str
    version: int


class LeasePolicyInput(RequestModel):
    ttl: int = Field(ge=1, le=MAX_LEASE_TTL, description="Seconds.")
    onExpire: str = Field(
        "delete",
        description='One of the statuses, reachable from every non-final one, or "delete".',
    )


StatusList = list[Status]


class DefineStateMachine(RequestModel):
    """A transition table as `GET /state-machines/{entity}` shows it (without
    `source` and `version`), checked as tables from STATE_MACHINES_FILE are."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ORDER_TABLE]})

    entity: EntityType | None = Field(
        None, description="Optional; when given, the same type as the path."
    )
    statuses: list[Status] = Field(
        min_length=1, max_length=200, description="Every status of the type (1 to 200)."
    )
    initial: StatusList | Literal["*"] = Field(
        "*", description='Statuses a new state may start in; "*": any.'
    )
    transitions: dict[Status, StatusList | Literal["*"]] | Literal["*"] = Field(
        default_factory=dict,
        description='Status → the statuses it may go to ("*": any); "*" alone: any → any.',
    )
    final: StatusList | None = Field(
        None, description="Default: the statuses with no transitions out."
    )
    lease: LeasePolicyInput | None = Field(None, description="The lease new states get.")
    metadataSchema: JsonSchemaDocument | None = Field(
        None,
        description="A JSON Schema (draft 2020-12) for the metadata of every write; "
        "references only within it (#…).",
    )

    def table(self) -> dict[str, object]:
        """The table as `build_machine` reads it (and the YAML file holds it)."""
        return self.model_dump(exclude={"entity"}, exclude_none=True)


class MachineTable(BaseModel):
    statuses: list[str] = Field(description="Every status of the type.")
    initial: list[str] = Field(description="Statuses a new state may start in.")
    final: list[str] = Field(description="Statuses with no way out.")
    transitions: dict[str, list[str]] = Field(
        description="For each status, the statuses it may move to."
    )
    lease: LeasePolicyView | None = Field(None, description="The lease new states get.")
    metadataSchema: JsonSchemaDocument | None = Field(
        None, description="The JSON Schema every write's metadata must match."
    )


class MachineHistoryEntry(BaseModel):
    revision: int = Field(description="The revision of its `machine.updated` event.")
    version: int = Field(description="The definition's version after the change.")
    actor: str = Field(description="The API key's name that made the change.")
    changedAt: Timestamp = Field(description="The commit time.")
    previous: MachineTable | None = Field(description="The table before (null: none).")
    definition: MachineTable | None = Field(description="The table after (null: removed).")


class MachineHistoryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "revision": 41,
                            "version": 1,
                            "actor": "ops",
                            "changedAt": "2026-11-27T09:00:00.000Z",
                            "previous": None,
                            "definition": _ORDER_TABLE,
                        }
                    ],
                }
            ]
        }
    )

    items: list[MachineHistoryEntry] = Field(description="The changes, oldest first.")
    nextCursor: str | None = Field(None, description="Pass as `cursor` for the next page.")
