"""The JSON the States API answers with, encoded once with orjson.

Responses leave as these bytes (the routes declare the same shapes as pydantic
models, `schemas.py`, for the OpenAPI document), and the same bytes are what
the caches keep, so a cached state is served without decoding or validating it
again. The codecs at the end keep a write's answer for an idempotent retry
(idempotency.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from pydantic import BaseModel

from potok_state.changes.model import HistoryRecord, StoredState
from potok_state.clock import format_timestamp
from potok_state.idempotency import ModelCodec
from potok_state.storage.port import ListedState


@dataclass(frozen=True, slots=True)
class EncodedState:
    """One state as the API shows it (`StateView`), with what the routes and
    the caches need to know without parsing it."""

    entity: str
    entity_id: str
    version: int
    revision: int
    body: bytes
    leased: bool = False
    """The body shows a lease, whose expiry heartbeats move without a new
    revision: such a body is never served from a cache."""

    @classmethod
    def of(cls, state: StoredState) -> EncodedState:
        return cls(
            state.entity,
            state.entity_id,
            state.version,
            state.revision,
            state_json(state),
            state.lease_ttl is not None,
        )

    @classmethod
    def from_json(cls, body: bytes) -> EncodedState:
        view = orjson.loads(body)
        return cls(
            view["entity"],
            view["entityId"],
            view["version"],
            view["revision"],
            body,
            "lease" in view,
        )


def stored_state(body: bytes) -> StoredState:
    """The state a `StateView` JSON describes."""
    view = orjson.loads(body)
    return StoredState(
        entity=view["entity"],
        entity_id=view["entityId"],
        status=view["status"],
        metadata=view["metadata"],
        version=view["version"],
        revision=view["revision"],
        created_at=datetime.fromisoformat(view["createdAt"]),
        updated_at=datetime.fromisoformat(view["updatedAt"]),
        lease_ttl=view["lease"]["ttl"] if "lease" in view else None,
        lease_expires_at=(
            datetime.fromisoformat(view["lease"]["expiresAt"]) if "lease" in view else None
        ),
    )


def _state_view(state: StoredState) -> dict[str, object]:
    view: dict[str, object] = {
        "entity": state.entity,
        "entityId": state.entity_id,
        "status": state.status,
        "metadata": state.metadata,
        "version": state.version,
        "revision": state.revision,
        "createdAt": format_timestamp(state.created_at),
        "updatedAt": format_timestamp(state.updated_at),
    }
    if state.lease_ttl is not None and state.lease_expires_at is not None:
        view["lease"] = {
            "ttl": state.lease_ttl,
            "expiresAt": format_timestamp(state.lease_expires_at),
        }
    return view


def state_json(state: StoredState) -> bytes:
    return orjson.dumps(_state_view(state))


def state_page_json(states: Iterable[ListedState], next_cursor: str | None) -> bytes:
    return orjson.dumps(
        {"items": [_listed_view(state) for state in states], "nextCursor": next_cursor}
    )


def _listed_view(state: ListedState) -> dict[str, object]:
    view: dict[str, object] = {
        "entity": state.entity,
        "entityId": state.entity_id,
        "status": state.status,
        "metadata": orjson.Fragment(state.metadata),
        "version": state.version,
        "revision": state.revision,
        "createdAt": state.created_at,
        "updatedAt": state.updated_at,
    }
    if state.lease_ttl is not None and state.lease_expires_at is not None:
        view["lease"] = {"ttl": state.lease_ttl, "expiresAt": state.lease_expires_at}
    return view


def history_page_json(records: Sequence[HistoryRecord], next_cursor: str | None) -> bytes:
    return orjson.dumps(
        {
            "items": [
                {
                    "revision": record.revision,
                    "version": record.version,
                    "event": record.event,
                    "previousStatus": record.previous_status,
                    "newStatus": record.new_status,
                    "metadata": record.metadata,
                    "reason": record.reason,
                    "actor": record.actor,
                    "changedAt": format_timestamp(record.changed_at),
                }
                for record in records
            ],
            "nextCursor": next_cursor,
        }
    )


def fragment(body: bytes) -> orjson.Fragment:
    """Already-encoded JSON to embed in a larger document."""
    return orjson.Fragment(body)


class Deleted(BaseModel):
    entity: str
    entityId: str
    version: int
    revision: int


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A batch's answer (`BatchResult` JSON) and the states it wrote."""

    body: bytes
    states: tuple[EncodedState, ...] = ()


@dataclass(frozen=True, slots=True)
class EncodedPage:
    """A StatePage as JSON and the revision it was read at."""

    body: bytes
    revision: int


class _StateCodec:
    def encode(self, outcome: EncodedState) -> bytes:
        return outcome.body

    def decode(self, data: bytes) -> EncodedState:
        return EncodedState.from_json(data)


class _BatchCodec:
    def encode(self, outcome: EncodedBatch) -> bytes:
        return outcome.body

    def decode(self, data: bytes) -> EncodedBatch:
        return EncodedBatch(data)


STATE_CODEC = _StateCodec()
BATCH_CODEC = _BatchCodec()
DELETED_CODEC = ModelCodec(Deleted)
