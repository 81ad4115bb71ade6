"""GET, PUT, PATCH and DELETE of one state, with ETag / If-Match."""

from __future__ import annotations

import httpx
import pytest

STATES = "/api/v1/states"


async def create(
    client: httpx.AsyncClient, entity: str, entity_id: str, status: str, **extra: object
) -> dict[str, object]:
    response = await client.post(
        f"{STATES}/{entity}", json={"entityId": entity_id, "status": status, **extra}
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, object] = response.json()
    return body


def assert_error(response: httpx.Response, status_code: int, code: str) -> dict[str, object]:
    assert response.status_code == status_code, response.text
    body: dict[str, object] = response.json()
    assert body["statusCode"] == status_code
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


async def test_get_returns_the_state_with_its_version_as_etag(client: httpx.AsyncClient) -> None:
    created = await create(client, "task", "t1", "created", metadata={"a": 1})
    await client.put(f"{STATES}/task/t1", json={"status": "in_progress"})
    response = await client.get(f"{STATES}/task/t1")
    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    body = response.json()
    assert body["entity"] == "task"
    assert body["entityId"] == "t1"
    assert body["status"] == "in_progress"
    assert body["metadata"] == {"a": 1}
    assert body["version"] == 2
    assert body["createdAt"] == created["createdAt"]


async def test_get_unknown_state_is_404_with_the_error_body(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{STATES}/task/nope", headers={"x-request-id": "req-42"})
    assert response.status_code == 404
    assert response.json() == {
        "statusCode": 404,
        "error": "Not Found",
        "code": "state_not_found",
        "message": response.json()["message"],
        "details": {},
        "requestId": "req-42",
    }
    assert "nope" in response.json()["message"]
    assert response.headers["x-request-id"] == "req-42"


async def test_put_changes_status_and_replaces_metadata(client: httpx.AsyncClient) -> None:
    await create(client, "task", "t1", "created", metadata={"a": 1, "b": {"c": 2}})
    response = await client.put(
        f"{STATES}/task/t1", json={"status": "in_progress", "metadata": {"z": True}}
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    body = response.json()
    assert body["status"] == "in_progress"
    assert body["metadata"] == {"z": True}
    assert body["version"] == 2


async def test_put_without_status_keeps_it(client: httpx.AsyncClient) -> None:
    await create(client, "task", "t1", "in_progress", metadata={"a": 1})
    response = await client.put(f"{STATES}/task/t1", json={"metadata": {"b": 2}})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "in_progress"
    assert response.json()["metadata"] == {"b": 2}


async def test_put_without_metadata_keeps_it(client: httpx.AsyncClient) -> None:
    await create(client, "task", "t1", "in_progress", metadata={"a": 1})
    response = await client.put(f"{STATES}/task/t1", json={"status": "completed"})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"a": 1}


async def test_put_empty_body_is_422(client: httpx.AsyncClient) -> None:
    await create(client, "task", "t1", "created")
    assert_error(await client.put(f"{STATES}/task/t1", json={}), 422, "empty_update")
    assert (await client.get(f"{STATES}/task/t1")).json()["version"] == 1


async def test_put_and_patch_unknown_state_are_404(client: httpx.AsyncClient) -> None:
    for method in ("PUT", "PATCH"):
        response = await client.request(method, f"{STATES}/task/ghost", json={"status": "failed"})
        assert_error(response, 404, "state_not_found")
    assert (await client.get(f"{STATES}/task/ghost")).status_code == 404


async def test_put_forbidden_transition_is_409(client: httpx.AsyncClient) -> None:
    await create(client, "task", "t1", "created")
    body = assert_error(
        await client.put(f"{STATES}/task/t1", json={"status": "completed"}),
        409,
        "invalid_transition",
    )
    assert body["details"]["currentStatus"] == "created"  # type: ignore[index]


async def test_patch_merges_metadata_as_json_merge_patch(client: httpx.AsyncClient) -> None:
    await create(
        client,
        "task",
        "t1",
        "created",
        metadata={
            "owner": {"name": "ann", "team": "core", "tags": ["a", "b"]},
            "priority": "high",
            "retries": 1,
        },
    )
    response = await client.patch(
        f"{STATES}/task/t1",
        json={
            "metadata": {
                "owner": {"team": None, "tags": ["c"], "site": {"city": "Oslo"}},
                "priority": None,
                "retries": 2,
                "new": "yes",
            }
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "created"
    assert body["version"] == 2
    assert body["metadata"] == {
        "owner": {"name": "ann", "tags": ["c"], "site": {"city": "Oslo"}},
        "retries": 2,
        "new": "yes",
    }
    assert (await client.get(f"{STATES}/task/t1")).json()["metadata"] == body["metadata"]


async def test_patch_with_status_only_keeps_metadata(client: httpx.AsyncClient) -> None:
    await create(client, "task", "t1", "created", metadata={"a": 1})
    response = await client.patch(f"{STATES}/task/t1", json={"status": "in_progress"})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"a": 1}
    assert response.json()["status"] == "in_progress"


async def test_patch_that_grows_metadata_past_the_limit_is_422(client: httpx.AsyncClient) -> None:
    await create(client, "parcel", "p1", "ok", metadata={"a": "x" * 40_000})
    response = await client.patch(f"{STATES}/parcel/p1", json={"metadata": {"b": "y" * 40_000}})
    assert_error(response, 422, "metadata_too_large")
    state = (await client.get(f"{STATES}/parcel/p1")).json()
    assert state["version"] == 1
    assert list(state["metadata"]) == ["a"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_if_match_applies_only_at_that_version(
    client: httpx.AsyncClient, method: str
) -> None:
    await create(client, "user", "u1", "online")
    await create(client, "user", "u1", "busy")

    stale = await client.request(
        method, f"{STATES}/user/u1", json={"status": "offline"}, headers={"If-Match": '"1"'}
    )
    body = assert_error(stale, 412, "version_mismatch")
    assert body["details"] == {"currentVersion": 2, "expectedVersion": 1}
    assert body["message"] == "user 'u1' is at version 2; the request expected version 1."
    assert (await client.get(f"{STATES}/user/u1")).json()["status"] == "busy"

    current = await client.request(
        method, f"{STATES}/user/u1", json={"status": "offline"}, headers={"If-Match": '"2"'}
    )
    assert current.status_code == 200, current.text
    assert current.headers["etag"] == '"3"'

    # If-Match compares strongly (RFC 9110, 13.1.1): a weak tag could never
    # match, so it is refused, named, rather than answered 412 for ever.
    weak = await client.request(
        method, f"{STATES}/user/u1", json={"status": "online"}, headers={"If-Match": 'W/"3"'}
    )
    body = assert_error(weak, 400, "bad_request")
    assert 'W/"3" is a weak tag' in str(body["message"])
    assert body["details"] == {"ifMatch": 'W/"3"'}

    anything = await client.request(
        method, f"{STATES}/user/u1", json={"status": "busy"}, headers={"If-Match": "*"}
    )
    assert anything.status_code == 200, anything.text
    assert anything.json()["version"] == 4


@pytest.mark.parametrize("if_match", ['"abc"', "v2", '"-1"', '"1.5"', '"99999999999"'])
async def test_malformed_if_match_is_400(client: httpx.AsyncClient, if_match: str) -> None:
    await create(client, "user", "u1", "online")
    for method in ("PUT", "PATCH"):
        response = await client.request(
            method, f"{STATES}/user/u1", json={"status": "busy"}, headers={"If-Match": if_match}
        )
        body = assert_error(response, 400, "bad_request")
        assert if_match in str(body["message"])
    response = await client.delete(f"{STATES}/user/u1", headers={"If-Match": if_match})
    assert_error(response, 400, "bad_request")
    assert (await client.get(f"{STATES}/user/u1")).json()["version"] == 1


async def test_delete_removes_the_state_and_keeps_history(client: httpx.AsyncClient) -> None:
    await create(client, "task", "t1", "created", metadata={"a": 1})
    await client.put(f"{STATES}/task/t1", json={"status": "in_progress"})

    response = await client.delete(f"{STATES}/task/t1")
    assert response.status_code == 204
    assert response.content == b""

    assert_error(await client.get(f"{STATES}/task/t1"), 404, "state_not_found")
    listed = (await client.get(f"{STATES}/task")).json()["items"]
    assert [s["entityId"] for s in listed] == []

    history = await client.get(f"{STATES}/task/t1/history")
    assert history.status_code == 200
    items = history.json()["items"]
    assert [(i["event"], i["previousStatus"], i["newStatus"], i["version"]) for i in items] == [
        ("entity.created", None, "created", 1),
        ("entity.updated", "created", "in_progress", 2),
        ("entity.deleted", "in_progress", None, 3),
    ]
    assert items[-1]["metadata"] == {"a": 1}

    assert_error(await client.delete(f"{STATES}/task/t1"), 404, "state_not_found")


async def test_delete_honours_if_match(client: httpx.AsyncClient) -> None:
    await create(client, "user", "u1", "online")
    stale = await client.delete(f"{STATES}/user/u1", headers={"If-Match": '"2"'})
    assert_error(stale, 412, "version_mismatch")
    assert (await client.get(f"{STATES}/user/u1")).status_code == 200
    current = await client.delete(f"{STATES}/user/u1", headers={"If-Match": '"1"'})
    assert current.status_code == 204
    assert (await client.get(f"{STATES}/user/u1")).status_code == 404


async def test_recreate_after_delete_starts_at_version_1(client: httpx.AsyncClient) -> None:
    first = await create(client, "task", "t1", "in_progress")
    await client.put(f"{STATES}/task/t1", json={"status": "completed"})
    assert (await client.delete(f"{STATES}/task/t1")).status_code == 204

    again = await client.post(
        f"{STATES}/task", json={"entityId": "t1", "status": "created", "metadata": {"n": 2}}
    )
    assert again.status_code == 201, again.text
    body = again.json()
    assert body["version"] == 1
    assert body["status"] == "created"
    assert body["metadata"] == {"n": 2}
    assert isinstance(first["revision"], int)
    assert body["revision"] > first["revision"]
    assert again.headers["etag"] == '"1"'

    events = [i["event"] for i in (await client.get(f"{STATES}/task/t1/history")).json()["items"]]
    assert events == ["entity.created", "entity.updated", "entity.deleted", "entity.created"]
