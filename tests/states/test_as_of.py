"""Reads as of a revision or a time (docs/data-model.md, "Reads as of a revision
or a time"): every past version exactly, 404 before creation and while
deleted, 410 once retention pruned what is needed."""

from __future__ import annotations

from datetime import timedelta, timezone

import httpx

from potok_state.clock import utc_now
from tests.support.history import TASKS, as_of, life_of_t1, parse_time, wire, write


async def test_each_past_version_by_revision_and_by_time(client: httpx.AsyncClient) -> None:
    versions = await life_of_t1(client)
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    assert versions[2]["metadata"] == {"step": 1, "owner": "ana"}
    for version in versions:
        by_revision = await as_of(client, "t1", version["revision"])
        assert by_revision.status_code == 200, by_revision.text
        assert by_revision.json() == version
        assert by_revision.headers["etag"] == f'"{version["version"]}"'
        by_time = await as_of(client, "t1", version["updatedAt"])
        assert by_time.json() == version
        # Between two changes: the earlier one.
        just_after = wire(parse_time(version["updatedAt"]) + timedelta(milliseconds=1))
        assert (await as_of(client, "t1", just_after)).json() == version
    # A revision of another entity's change shows t1 as it was then.
    other = await write(client, "POST", TASKS, entityId="t2", status="created")
    assert (await as_of(client, "t1", other["revision"])).json() == versions[-1]
    # A time zone offset is read as such.
    local = parse_time(versions[1]["updatedAt"]).astimezone(timezone(timedelta(hours=2)))
    assert (await as_of(client, "t1", local.isoformat())).json() == versions[1]


async def test_before_creation_while_deleted_and_after_rebirth(client: httpx.AsyncClient) -> None:
    early = await write(client, "POST", TASKS, entityId="t0", status="created")
    versions = await life_of_t1(client)
    before = await as_of(client, "t1", early["revision"])
    assert before.status_code == 404
    assert before.json()["code"] == "state_not_found"
    assert (await as_of(client, "t1", 0)).status_code == 404
    assert (await as_of(client, "t1", early["updatedAt"])).json()["code"] == "state_not_found"
    assert (await as_of(client, "t1", "2001-01-01T00:00:00Z")).status_code == 404

    deleted = await client.delete(f"{TASKS}/t1")
    assert deleted.status_code == 204
    head = (await client.get("/api/v1/changes", params={"after": 0})).json()["nextAfter"]
    gone = await as_of(client, "t1", head)
    assert gone.status_code == 404
    assert gone.json()["code"] == "state_deleted"
    assert gone.json()["details"] == {"deletedAt": head, "version": 5}
    reborn = await write(client, "POST", TASKS, entityId="t1", status="in_progress")
    assert (await as_of(client, "t1", head)).json()["code"] == "state_deleted"
    now = await as_of(client, "t1", reborn["revision"])
    assert now.json() == reborn
    assert now.json()["createdAt"] != versions[0]["createdAt"]
    assert (await as_of(client, "t1", versions[1]["revision"])).json() == versions[1]


async def test_bad_and_future_points(client: httpx.AsyncClient) -> None:
    state = await write(client, "POST", TASKS, entityId="t1", status="created")
    future = await as_of(client, "t1", state["revision"] + 1)
    assert future.status_code == 422
    assert future.json()["code"] == "revision_unknown"
    for bad in ("yesterday", "-1", "1.5", "99999999999999999999", "2026-13-40T00:00:00Z"):
        response = await as_of(client, "t1", bad)
        assert response.status_code == 422, bad
        assert response.json()["code"] == "invalid_as_of"
    # A time to come is now: the newest revision committed by then.
    later = wire(utc_now() + timedelta(days=1))
    assert (await as_of(client, "t1", later)).json() == state
    # Other query parameters leave the plain read as it is.
    plain = await client.get(f"{TASKS}/t1", params={"other": "1"})
    assert plain.json() == state
