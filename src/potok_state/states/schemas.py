"""Wire models of the States API. Field names are the JSON names (camelCase)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from potok_state.changes.model import (
    HistoryRecord,
    StoredState,
)
from potok_state.clock import Timestamp
from potok_state.kit.request_model import RequestModel
from potok_state.states.machines import MAX_LEASE_TTL

ENTITY_TYPE_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
ENTITY_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
STATUS_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

EntityType = Annotated[str, StringConstraints(pattern=ENTITY_TYPE_PATTERN)]
EntityId = Annotated[str, StringConstraints(pattern=ENTITY_ID_PATTERN)]
Status = Annotated[str, StringConstraints(pattern=STATUS_PATTERN)]
# A list's `sort`: a field, descending with a leading `-`.
SortSpec = Literal[
    "updatedAt",
    "-updatedAt",
    "createdAt",
    "-createdAt",
    "entityId",
    "-entityId",
    "status",
    "-status",
    "version",
    "-version",
]
Metadata = dict[str, JsonValue]
Reason = Annotated[str, StringConstraints(max_length=1000)]
LeaseTtl = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_LEASE_TTL,
        description="Hold a lease of this many seconds (renewed by heartbeats and writes; when it "
        "lapses the state changes by itself); 0 drops the lease. Omitted: a leased state keeps "
        "its lease, a new one gets its type's default.",
    ),
]


class RecordStateRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entityId": "task_123",
                    "status": "in_progress",
                    "metadata": {"assignee": "user_789", "priority": "high"},
                    "reason": "picked up",
                }
            ]
        }
    )

    entityId: EntityId
    status: Status
    metadata: Metadata | None = Field(
        None, description="Replaces the metadata when given; kept when omitted."
    )
    reason: Reason | None = None
    ttl: LeaseTtl | None = None


class UpdateStateRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "completed",
                    "metadata": {"assignee": "user_789", "priority": "high"},
                    "reason": "done",
                }
            ]
        }
    )

    status: Status | None = None
    metadata: Metadata | None = None
    reason: Reason | None = None
    ttl: LeaseTtl | None = None


class LeaseView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ttl": 30, "expiresAt": "2026-11-27T10:00:30.000Z"}]}
    )

    ttl: int
    expiresAt: Timestamp


class HeartbeatRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ttl": 30}]})

    ttl: Annotated[int, Field(ge=1, le=MAX_LEASE_TTL)] | None = Field(
        None, description="A new lease length, s; omitted: the lease's own."
    )


class BatchHeartbeatRequest(HeartbeatRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ids": ["billing-7f3a"], "ttl": 15}]}
    )

    ids: list[EntityId] = Field(min_length=1, max_length=1000)


class HeartbeatResult(BaseModel):
    entityId: str
    ok: bool
    lease: LeaseView | None = None
    error: str | None = Field(
        None, description="`state_not_found`, `no_lease` (none, or it has lapsed)."
    )


class BatchHeartbeatResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "renewed": 1,
                    "failed": 1,
                    "items": [
                        {
                            "entityId": "billing-7f3a",
                            "ok": True,
                            "lease": {"ttl": 15, "expiresAt": "2026-11-27T10:00:15.000Z"},
                        },
                        {"entityId": "billing-c91e", "ok": False, "error": "no_lease"},
                    ],
                }
            ]
        }
    )

    renewed: int
    failed: int
    items: list[HeartbeatResult]


class StateView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entity": "task",
                    "entityId": "task_123",
                    "status": "in_progress",
                    "metadata": {"assignee": "user_789", "priority": "high"},
                    "version": 1,
                    "revision": 1,
                    "createdAt": "2026-11-27T10:00:00.000Z",
                    "updatedAt": "2026-11-27T10:00:00.000Z",
                }
            ]
        }
    )

    entity: str
    entityId: str
    status: str
    metadata: Metadata
    version: int
    revision: int
    createdAt: Timestamp
    updatedAt: Timestamp
    lease: LeaseView | None = Field(None, description="Present while the state holds a lease.")

    @classmethod
    def of(cls, state: StoredState) -> StateView:
        return cls(
            entity=state.entity,
            entityId=state.entity_id,
            status=state.status,
            metadata=state.metadata,
            version=state.version,
            revision=state.revision,
            createdAt=state.created_at,
            updatedAt=state.updated_at,
        )


class StatePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "entity": "task",
                            "entityId": "task_123",
                            "status": "completed",
                            "metadata": {"assignee": "user_789", "priority": "high"},
                            "version": 2,
                            "revision": 2,
                            "createdAt": "2026-11-27T10:00:00.000Z",
                            "updatedAt": "2026-11-27T10:05:00.000Z",
                        }
                    ],
                    "nextCursor": "WyItdXBkYXRlZEF0IiwyLCJ0YXNrXzEyMyJd",
                }
            ]
        }
    )

    items: list[StateView]
    nextCursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class HistoryEntry(BaseModel):
    revision: int
    version: int
    event: str
    previousStatus: str | None
    newStatus: str | None
    metadata: Metadata
    reason: str | None
    actor: str
    changedAt: Timestamp

    @classmethod
    def of(cls, record: HistoryRecord) -> HistoryEntry:
        return cls(
            revision=record.revision,
            version=record.version,
            event=record.event,
            previousStatus=record.previous_status,
            newStatus=record.new_status,
            metadata=record.metadata,
            reason=record.reason,
            actor=record.actor,
            changedAt=record.changed_at,
        )


class HistoryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "revision": 1,
                            "version": 1,
                            "event": "entity.created",
                            "previousStatus": None,
                            "newStatus": "in_progress",
                            "metadata": {"assignee": "user_789", "priority": "high"},
                            "reason": "picked up",
                            "actor": "gateway",
                            "changedAt": "2026-11-27T10:00:00.000Z",
                        },
                        {
                            "revision": 2,
                            "version": 2,
                            "event": "entity.updated",
                            "previousStatus": "in_progress",
                            "newStatus": "completed",
                            "metadata": {"assignee": "user_789", "priority": "high"},
                            "reason": "done",
                            "actor": "gateway",
                            "changedAt": "2026-11-27T10:05:00.000Z",
                        },
                    ],
                    "nextCursor": "Mg",
                }
            ]
        }
    )

    items: list[HistoryEntry]
    nextCursor: str | None = None


class BatchItem(RequestModel):
    entityId: EntityId
    status: Status
    metadata: Metadata | None = None
    reason: Reason | None = None
    expectedVersion: int | None = Field(None, ge=1, le=2_147_483_647)
    ttl: LeaseTtl | None = None


class BatchRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "atomic": True,
                    "items": [
                        {"entityId": "p1", "status": "pending"},
                        {"entityId": "p2", "status": "pending"},
                    ],
                }
            ]
        }
    )

    items: list[BatchItem] = Field(min_length=1, max_length=1000)
    atomic: bool = Field(True, description="All-or-nothing when true; per-item results when false.")


class ItemError(BaseModel):
    statusCode: int
    code: str
    message: str
    details: dict[str, JsonValue] = {}


class BatchItemResult(BaseModel):
    index: int
    entityId: str
    ok: bool
    state: StateView | None = None
    error: ItemError | None = None


class BatchResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "atomic": True,
                    "succeeded": 2,
                    "failed": 0,
                    "items": [
                        {
                            "index": 0,
                            "entityId": "p1",
                            "ok": True,
                            "state": {
                                "entity": "process",
                                "entityId": "p1",
                                "status": "pending",
                                "metadata": {},
                                "version": 1,
                                "revision": 3,
                                "createdAt": "2026-11-27T10:10:00.000Z",
                                "updatedAt": "2026-11-27T10:10:00.000Z",
                            },
                        },
                        {
                            "index": 1,
                            "entityId": "p2",
                            "ok": True,
                            "state": {
                                "entity": "process",
                                "entityId": "p2",
                                "status": "pending",
                                "metadata": {},
                                "version": 1,
                                "revision": 4,
                                "createdAt": "2026-11-27T10:10:00.000Z",
                                "updatedAt": "2026-11-27T10:10:00.000Z",
                            },
                        },
                    ],
                }
            ]
        }
    )

    atomic: bool
    succeeded: int
    failed: int
    items: list[BatchItemResult]


class LeasePolicyView(BaseModel):
    ttl: int
    onExpire: str = Field(description='The status a lapsed lease moves to, or "delete".')


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
                }
            ]
        }
    )

    entity: str
    statuses: list[str]
    initial: list[str]
    final: list[str]
    transitions: dict[str, list[str]]
    lease: LeasePolicyView | None = Field(None, description="The lease new states get.")
