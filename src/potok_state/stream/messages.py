"""What one outbox event becomes in the stream (docs/stream.md, "Messages"):
its subject, its headers, and its body — the exact bytes of the change feed's
and the webhook's payload."""

from __future__ import annotations

from potok_state.changes.model import EventRecord

REVISION_HEADER = "Potok-Revision"
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE_HEADER = "Nats-Expected-Last-Sequence"


def subject(prefix: str, record: EventRecord) -> str:
    """`{prefix}.{event}.{entity}` for an event of an entity type: a state change
    (`potok.entity.created.task`) or a change of the type's definition
    (`potok.machine.updated.order`); `{prefix}.{event}` for any other
    (`potok.custom.deploy`, `potok.subscription.disabled`). An empty token of a custom event's name
    (`custom.a..b`) is written `_`: NATS subjects have none."""
    tokens = [prefix, *(token or "_" for token in record.event.split("."))]
    if record.event.startswith(("entity.", "machine.")) and record.entity is not None:
        tokens.append(record.entity)
    return ".".join(tokens)


def headers(record: EventRecord, expected_last_sequence: int) -> dict[str, str]:
    """`Nats-Msg-Id` lets JetStream drop a re-publish; the expected last
    sequence makes the stream refuse a message that would not come right after
    the one before it (publisher.py)."""
    return {
        MSG_ID_HEADER: record.event_id,
        REVISION_HEADER: str(record.revision),
        EXPECTED_LAST_SEQUENCE_HEADER: str(expected_last_sequence),
    }
