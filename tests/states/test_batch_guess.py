"""Batches without a near cache: the service guesses the states it does not
know of absent until a batch of the type finds them present, then reads them
first until a batch finds them absent (states/service.py, `apply_batch`).
Both ways must write the same thing."""

from __future__ import annotations

import httpx
import pytest

from potok_state.settings import Settings
from tests.states.test_batch import Body, batch, last_revision


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"cache": settings.cache.model_copy(update={"near_size": 0})})


async def _statuses(client: httpx.AsyncClient, ids: list[str], status: str) -> list[Body]:
    items = [{"entityId": entity_id, "status": status} for entity_id in ids]
    response = await batch(client, "task", {"items": items, "atomic": True})
    assert response.status_code == 200, response.text[:500]
    return [item["state"] for item in response.json()["items"]]


async def test_creating_and_transition_batches_alternate(client: httpx.AsyncClient) -> None:
    first = [f"a-{n:02d}" for n in range(40)]
    second = [f"b-{n:02d}" for n in range(40)]
    before = await last_revision(client)
    rounds = [
        (first, "created", 1),  # guessed absent, and they are
        (first, "in_progress", 2),  # guessed absent, found present: decided again
        (first, "completed", 3),  # read first
        (second, "created", 1),  # read first, found absent
        (second, "in_progress", 2),  # guessed absent again
    ]
    for ids, status, version in rounds:
        states = await _statuses(client, ids, status)
        assert [(s["entityId"], s["status"], s["version"]) for s in states] == [
            (entity_id, status, version) for entity_id in ids
        ]
    # One change per item and round, none written twice.
    page = await client.get("/api/v1/changes", params={"after": before, "limit": 1000})
    changes = page.json()["items"]
    assert len(changes) == 5 * 40
    events = [change["event"] for change in changes]
    assert events.count("entity.created") == 80
    assert events.count("entity.updated") == 120
    history = (await client.get("/api/v1/states/task/a-07/history")).json()["items"]
    assert [h["newStatus"] for h in history] == ["created", "in_progress", "completed"]
