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
from potok_state.names import ENTITY_ID_PATTERN, ENTITY_TYPE_PATTERN, STATUS_PATTERN
from potok_state.states.machines import MAX_LEASE_TTL

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
LEASE_TTL = (
    "Hold a lease of this many seconds (renewed by heartbeats and writes; when it lapses the "
    "state changes by itself); 0 drops the lease. Omitted: a leased state keeps its lease, a new "
    "one gets its type's default."
)
LeaseTtl = Annotated[int, Field(ge=0, le=MAX_LEASE_TTL, description=LEASE_TTL)]


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

    entityId: EntityId = Field(description="Entity id: 1-128 of A-Z a-z 0-9 . _ : @ -.")
    status: Status = Field(
        description="The status to record: a new state's first, or the next of an existing one "
        "(checked against the type's transition table)."
    )
    metadata: Metadata | None = Field(
        None, description="Replaces the metadata when given; kept when omitted."
    )
    reason: Reason | None = Field(
        None, description="Why, kept in the history and sent with the event."
    )
    ttl: LeaseTtl | None = Field(None, description=LEASE_TTL)


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

    status: Status | None = Field(None, description="The next status; omitted: unchanged.")
    metadata: Metadata | None = Field(
        None,
        description="PUT: replaces the metadata; PATCH: merged into it (JSON merge patch, null "
        "removes a key). Omitted: unchanged.",
    )
    reason: Reason | None = Field(
        None, description="Why, kept in the history and sent with the event."
    )
    ttl: LeaseTtl | None = Field(None, description=LEASE_TTL)


class LeaseView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ttl": 30, "expiresAt": "2026-11-27T10:00:30.000Z"}]}
    )

    ttl: int = Field(description="Lease length, s.")
    expiresAt: Timestamp = Field(
        description="When the lease lapses unless a heartbeat or a write renews it."
    )


class HeartbeatRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ttl": 30}]})

    ttl: Annotated[int, Field(ge=1, le=MAX_LEASE_TTL)] | None = Field(
        None, description="A new lease length, s; omitted: the lease's own."
    )


class BatchHeartbeatRequest(HeartbeatRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ids": ["billing-7f3a"], "ttl": 15}]}
    )

    ids: list[EntityId] = Field(
        min_length=1, max_length=1000, description="Entity ids whose leases to renew (1-1000)."
    )


class HeartbeatResult(BaseModel):
    entityId: str = Field(description="The entity id.")
    ok: bool = Field(description="Whether its lease was renewed.")
    lease: LeaseView | None = Field(None, description="The renewed lease (when ok).")
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

    renewed: int = Field(description="Leases renewed.")
    failed: int = Field(description="Ids whose lease was not renewed.")
    items: list[HeartbeatResult] = Field(description="One result per id, in request order.")


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

    entity: str = Field(description="Entity type.")
    entityId: str = Field(description="Entity id, unique within its type.")
    status: str = Field(description="The current status.")
    metadata: Metadata = Field(description="Free-form JSON object kept with the state.")
    version: int = Field(
        description="Changes of this state so far (1 when created); the ETag, and what If-Match "
        "and expectedVersion compare."
    )
    revision: int = Field(
        description="Store-wide revision of its last change (the change feed's order)."
    )
    createdAt: Timestamp = Field(description="When this state was created.")
    updatedAt: Timestamp = Field(description="When it last changed.")
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

    items: list[StateView] = Field(
        description="The states of this page, in the query's sort order."
    )
    nextCursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class HistoryEntry(BaseModel):
    revision: int = Field(description="Store-wide revision of this change.")
    version: int = Field(description="The state's version after this change.")
    event: str = Field(description="entity.created, entity.updated or entity.deleted.")
    previousStatus: str | None = Field(description="The status before (null for a creation).")
    newStatus: str | None = Field(description="The status after (null for a deletion).")
    metadata: Metadata = Field(description="The metadata after this change.")
    reason: str | None = Field(description="The reason given with the change.")
    actor: str = Field(description="Who changed it: the API key's name, or system:lease.")
    changedAt: Timestamp = Field(description="Commit time of the change.")

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

    items: list[HistoryEntry] = Field(description="Changes, oldest first.")
    nextCursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last."
    )


class BatchItem(RequestModel):
    entityId: EntityId = Field(description="Entity id: 1-128 of A-Z a-z 0-9 . _ : @ -.")
    status: Status = Field(description="The status to record (as POST /states/{entity}).")
    metadata: Metadata | None = Field(
        None, description="Replaces the metadata when given; kept when omitted."
    )
    reason: Reason | None = Field(
        None, description="Why, kept in the history and sent with the event."
    )
    expectedVersion: int | None = Field(
        None,
        ge=1,
        le=2_147_483_647,
        description="Apply only if the state is at this version (else 412 version_mismatch for "
        "this item).",
    )
    ttl: LeaseTtl | None = Field(None, description=LEASE_TTL)


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

    items: list[BatchItem] = Field(
        min_length=1,
        max_length=1000,
        description="1-1000 records, applied in order in one transaction.",
    )
    atomic: bool = Field(True, description="All-or-nothing when true; per-item results when false.")


class ItemError(BaseModel):
    statusCode: int = Field(description="The HTTP status this item alone would have got.")
    code: str = Field(description="Machine-readable error code (as in the error body).")
    message: str = Field(description="What went wrong.")
    details: dict[str, JsonValue] = Field(
        {}, description="Facts about the error (as in the error body)."
    )


class BatchItemResult(BaseModel):
    index: int = Field(description="Position of the item in the request.")
    entityId: str = Field(description="The item's entity id.")
    ok: bool = Field(description="Whether the item was written.")
    state: StateView | None = Field(None, description="The state it wrote (when ok).")
    error: ItemError | None = Field(None, description="Why it was not written (when not ok).")


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

    atomic: bool = Field(description="As requested: all-or-nothing, or per item.")
    succeeded: int = Field(description="Items written.")
    failed: int = Field(description="Items refused.")
    items: list[BatchItemResult] = Field(description="One result per item, in request order.")
