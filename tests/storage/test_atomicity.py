"""A change is all or nothing (docs/data-model.md): a failure after the state row is
written (here: a real database trigger refusing the history row of entity
`boom`) leaves no state, no history, no outbox event and no spent revision."""

from __future__ import annotations

import httpx

from tests.storage.conftest import MARKED, Install, assert_internal_error

STATES = "/api/v1/states"


async def assert_feed(client: httpx.AsyncClient, revisions: list[int]) -> None:
    changes = await client.get("/api/v1/changes", params={"limit": 1000})
    assert changes.status_code == 200, changes.text
    assert [item["revision"] for item in changes.json()["items"]] == revisions


async def assert_next_change_gets_revision(client: httpx.AsyncClient, revision: int) -> None:
    good = await client.post(f"{STATES}/task", json={"entityId": "fine", "status": "created"})
    assert good.status_code == 201, good.text
    assert good.json()["revision"] == revision
    assert good.json()["version"] == 1


async def test_failed_create_leaves_nothing_behind(
    client: httpx.AsyncClient, install_failure: Install
) -> None:
    await install_failure()

    response = await client.post(
        f"{STATES}/task", json={"entityId": MARKED, "status": "created", "metadata": {"a": 1}}
    )

    assert_internal_error(response)
    missing = await client.get(f"{STATES}/task/{MARKED}")
    assert missing.status_code == 404, missing.text
    history = await client.get(f"{STATES}/task/{MARKED}/history")
    assert history.status_code == 404, history.text
    listed = await client.get(f"{STATES}/task")
    assert listed.json()["items"] == []
    await assert_feed(client, [])
    await assert_next_change_gets_revision(client, 1)
    await assert_feed(client, [1])


async def test_failed_atomic_batch_of_1000_leaves_nothing_behind(
    client: httpx.AsyncClient, install_failure: Install
) -> None:
    await install_failure()
    items = [{"entityId": f"t{index}", "status": "created"} for index in range(1000)]
    items[500] = {"entityId": MARKED, "status": "created"}

    response = await client.post(f"{STATES}/task/batch", json={"items": items, "atomic": True})

    assert_internal_error(response)
    listed = await client.get(f"{STATES}/task", params={"limit": 500})
    assert listed.json()["items"] == []
    for entity_id in ("t0", "t499", MARKED, "t501", "t999"):
        assert (await client.get(f"{STATES}/task/{entity_id}")).status_code == 404
        assert (await client.get(f"{STATES}/task/{entity_id}/history")).status_code == 404
    await assert_feed(client, [])
    await assert_next_change_gets_revision(client, 1)


async def test_failed_update_keeps_the_old_state_and_version(
    client: httpx.AsyncClient, install_failure: Install
) -> None:
    created = await client.post(
        f"{STATES}/task", json={"entityId": MARKED, "status": "created", "metadata": {"v": 1}}
    )
    assert created.status_code == 201, created.text
    await install_failure()

    for attempt in (
        client.put(f"{STATES}/task/{MARKED}", json={"status": "in_progress", "metadata": {"v": 2}}),
        client.patch(f"{STATES}/task/{MARKED}", json={"metadata": {"w": 3}}),
        client.post(f"{STATES}/task", json={"entityId": MARKED, "status": "failed"}),
        client.delete(f"{STATES}/task/{MARKED}"),
    ):
        assert_internal_error(await attempt)

    current = await client.get(f"{STATES}/task/{MARKED}")
    assert current.status_code == 200
    assert current.json() == created.json()
    assert current.headers["etag"] == '"1"'
    history = await client.get(f"{STATES}/task/{MARKED}/history")
    assert [entry["version"] for entry in history.json()["items"]] == [1]
    await assert_feed(client, [1])
    await assert_next_change_gets_revision(client, 2)
