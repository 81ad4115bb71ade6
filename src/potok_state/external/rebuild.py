"""Rebuilding a lost journal from the Admin Service (docs/external.md, "When
the journal is lost").

The Admin Service holds every state and every history record the replicator
wrote, each with its revision. `rebuild_journal` reads both collections into
an empty journal, in one transaction: the states and their history as they
were, the revision counter at the newest revision found, and the replication
cursor there too (the Admin Service has all of it). What only the journal
held is not there to rebuild: changes not yet replicated when it was lost, the
outbox (the change feed starts after the rebuilt revisions), webhook
subscriptions and deliveries, idempotency keys, and leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from potok_state.external.client import AdminServiceClient, Json
from potok_state.storage.database import Tx
from potok_state.storage.sql import SqlStateStore

PAGE = 1000


class JournalNotEmpty(Exception):
    """The journal already holds changes: rebuilding would mix two histories."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    states: int
    history: int
    revision: int


async def rebuild_journal(
    store: SqlStateStore,
    admin: AdminServiceClient,
    *,
    states_collection: str,
    history_collection: str,
) -> Rebuilt:
    if await store.db.read(_holds_changes):
        raise JournalNotEmpty(
            "the journal (DATABASE_URL) already holds states or history: rebuild into an "
            "empty database"
        )
    history = sorted(await _everything(admin, history_collection), key=lambda d: int(d["revision"]))
    states = await _everything(admin, states_collection)
    revision = max(
        [int(doc["revision"]) for doc in history] + [int(doc["revision"]) for doc in states],
        default=0,
    )
    dialect = store.dialect

    async def write(tx: Tx) -> None:
        if await _holds_changes(tx):  # checked again inside the transaction
            raise JournalNotEmpty("the journal filled up while it was being rebuilt")
        await tx.executemany(
            "INSERT INTO state_history (revision, entity_type, entity_id, version, event, "
            "previous_status, new_status, metadata, reason, actor, changed_at, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            [
                (
                    int(doc["revision"]),
                    doc["entityType"],
                    doc["entityId"],
                    int(doc["version"]),
                    doc["event"],
                    doc.get("previousStatus"),
                    doc.get("newStatus"),
                    _json(doc.get("metadata")),
                    doc.get("reason"),
                    doc["actor"],
                    dialect.time(_time(doc["changedAt"])),
                    None if created is None else dialect.time(created),
                )
                for doc, created in zip(history, _life_starts(history), strict=True)
            ],
        )
        await tx.executemany(
            "INSERT INTO states (entity_type, entity_id, status, metadata, version, revision, "
            "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                (
                    doc["entityType"],
                    doc["entityId"],
                    doc["status"],
                    _json(doc.get("metadata")),
                    int(doc["version"]),
                    int(doc["revision"]),
                    dialect.time(_time(doc["createdAt"])),
                    dialect.time(_time(doc["updatedAt"])),
                )
                for doc in states
            ],
        )
        await tx.execute("UPDATE revision_counter SET value = $1 WHERE id = 1", revision)
        await tx.execute(
            "INSERT INTO external_sync (id, revision) VALUES (1, $1) "
            "ON CONFLICT (id) DO UPDATE SET revision = excluded.revision",
            revision,
        )

    await store.db.write(write)
    return Rebuilt(states=len(states), history=len(history), revision=revision)


def _life_starts(history: list[Json]) -> list[datetime | None]:
    """Each record's `created_at`, in revision order: the time of its entity's
    newest creation so far (None for a deletion, or when the creation is not
    among the records)."""
    created: dict[tuple[str, str], datetime] = {}
    starts: list[datetime | None] = []
    for doc in history:
        key = (doc["entityType"], doc["entityId"])
        if doc["event"] == "entity.created":
            created[key] = _time(doc["changedAt"])
        starts.append(None if doc.get("newStatus") is None else created.get(key))
    return starts


async def _holds_changes(tx: Tx) -> bool:
    found = await tx.fetchval(
        "SELECT EXISTS (SELECT 1 FROM states) OR EXISTS (SELECT 1 FROM state_history) "
        "OR EXISTS (SELECT 1 FROM outbox)"
    )
    return bool(found)


async def _everything(admin: AdminServiceClient, collection: str) -> list[Json]:
    found: list[Json] = []
    while True:
        page = await admin.list(collection, limit=PAGE, offset=len(found))
        found.extend(page)
        if len(page) < PAGE:
            return found


def _json(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)  # the API's form, `…T10:00:00.000Z`
