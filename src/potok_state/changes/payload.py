"""The event payload of docs/data-model.md, shared by webhooks, the watch stream and
the change feed.

The outbox stores an event's `data` as JSON text; the full body is assembled
from the outbox columns the same way every time, so a redelivery or replay
carries exactly the bytes that were signed the first time.
"""

from __future__ import annotations

import orjson

from potok_state.changes.model import (
    CustomEvent,
    EventRecord,
    Mutation,
)
from potok_state.clock import format_timestamp


def event_data(mutation: Mutation) -> str:
    if isinstance(mutation, CustomEvent):
        return orjson.dumps(mutation.data).decode()
    return orjson.dumps(
        {
            "entity": mutation.entity,
            "id": mutation.entity_id,
            "version": mutation.version,
            "previousStatus": mutation.previous_status,
            "newStatus": mutation.status,
            "metadata": mutation.metadata,
            "reason": mutation.reason,
        }
    ).decode()


def event_body(record: EventRecord) -> bytes:
    head = orjson.dumps(
        {
            "id": record.event_id,
            "event": record.event,
            "revision": record.revision,
            "timestamp": format_timestamp(record.created_at),
        }
    )
    return head[:-1] + b',"data":' + record.data.encode() + b"}"
