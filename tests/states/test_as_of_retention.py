"""Reads as of a point whose history retention pruned (docs/data-model.md,
"Reads as of a revision or a time"): 410 where what is needed is gone, exact
answers where it is not. On the SQL backends: with the external backend the
history is also the journal, which these tests prune on purpose."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from potok_state.events.retention import Pruner
from potok_state.settings import RetentionSettings
from tests.conftest import BACKENDS
from tests.support.history import TASKS, as_of, life_of_t1, parse_time, wire, write
from tests.support.polling import eventually


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def prune(app: FastAPI, kind: str, count: int, **settings: int) -> None:
    """Prune until `count` rows of `kind` are gone (outbox events only once the
    webhook dispatcher has passed them)."""
    pruner = Pruner(app.state.store, RetentionSettings(**settings), idempotency_ttl=60)  # type: ignore[arg-type]
    total = 0

    async def done() -> bool:
        nonlocal total
        total += (await pruner.prune()).counts()[kind]
        return total >= count

    await eventually(done, what=f"{count} {kind} rows to be pruned")


async def test_pruned_history_answers_410(app: FastAPI, client: httpx.AsyncClient) -> None:
    t1 = await life_of_t1(client)
    await prune(app, "history", 4, history_ttl=0, outbox_ttl=0)
    changed = await write(client, "PUT", f"{TASKS}/t1", status="in_progress")
    born = await write(client, "POST", TASKS, entityId="t2", status="created")

    for point in (t1[1]["revision"], t1[3]["revision"], t1[1]["updatedAt"]):
        response = await as_of(client, "t1", point)
        assert response.status_code == 410, (point, response.text)
        assert response.json()["code"] == "revision_pruned"
        assert response.json()["details"] == {"prunedThrough": t1[3]["revision"]}
    assert (await as_of(client, "t1", changed["revision"])).json() == changed
    # Whether t2 or t9 existed then is no longer known…
    assert (await as_of(client, "t2", t1[2]["revision"])).status_code == 410
    assert (await as_of(client, "t9", t1[2]["revision"])).status_code == 410
    # …but after the horizon it is.
    assert (await as_of(client, "t2", changed["revision"])).status_code == 404
    assert (await as_of(client, "t9", changed["revision"])).status_code == 404
    assert (await as_of(client, "t2", born["revision"])).json() == born


async def test_a_state_unchanged_since_its_history_was_pruned(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    t1 = await life_of_t1(client)
    later = await write(client, "POST", TASKS, entityId="t2", status="created")
    await prune(app, "history", 5, history_ttl=0, outbox_ttl=0)
    # Its last change is older than the point: the state row still says it.
    current = await as_of(client, "t1", later["revision"])
    assert current.json() == t1[-1]
    assert (await as_of(client, "t1", later["updatedAt"])).json() == t1[-1]


async def test_times_older_than_the_change_feed_read_the_history(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    versions = await life_of_t1(client)
    # The change feed is pruned, the history kept: a time is found in the history.
    await prune(app, "outbox", 4, outbox_ttl=0)
    for version in versions:
        assert (await as_of(client, "t1", version["updatedAt"])).json() == version
    before = wire(parse_time(versions[0]["updatedAt"]) - timedelta(milliseconds=1))
    assert (await as_of(client, "t1", before)).json()["code"] == "state_not_found"
