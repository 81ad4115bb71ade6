"""Subjects and headers of one event (docs/stream.md, "Messages")."""

from __future__ import annotations

from datetime import UTC, datetime

from potok_state.changes.model import EventRecord
from potok_state.stream.messages import headers, subject

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def event(name: str, entity: str | None = None) -> EventRecord:
    return EventRecord(
        revision=42,
        event_id="evt_1",
        event=name,
        entity=entity,
        entity_id="t1" if entity else None,
        data="{}",
        created_at=NOW,
    )


def test_entity_events_end_with_their_entity_type() -> None:
    assert subject("potok", event("entity.created", "task")) == "potok.entity.created.task"
    assert subject("acme.states", event("entity.deleted", "user")) == (
        "acme.states.entity.deleted.user"
    )


def test_definition_events_end_with_their_entity_type() -> None:
    assert subject("potok", event("machine.updated", "order")) == "potok.machine.updated.order"


def test_custom_and_operational_events_are_their_name_under_the_prefix() -> None:
    assert subject("potok", event("custom.deploy")) == "potok.custom.deploy"
    assert subject("potok", event("custom.deploy.started")) == "potok.custom.deploy.started"
    assert subject("potok", event("subscription.disabled")) == "potok.subscription.disabled"


def test_an_empty_token_of_a_custom_name_becomes_an_underscore() -> None:
    assert subject("potok", event("custom.a..b.")) == "potok.custom.a._.b._"


def test_headers_carry_the_event_id_and_the_revision() -> None:
    assert headers(event("custom.deploy"), 7) == {
        "Nats-Msg-Id": "evt_1",
        "Potok-Revision": "42",
        "Nats-Expected-Last-Sequence": "7",
    }
