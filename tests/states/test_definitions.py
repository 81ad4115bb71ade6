"""Transition tables defined over the API (docs/data-model.md, "Definitions over
the API"): checked like file tables, enforced on every write with their
metadata schema, versioned, read-only for built-in types, never stranding
states unless forced, with a history and a `machine.updated` event."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.receivers import running_receiver
from tests.support.sse import parse_sse

MACHINES = "/api/v1/state-machines"
ORDERS = "/api/v1/states/order"

Json = dict[str, Any]

ORDER: Json = {
    "statuses": ["new", "paid", "shipped", "cancelled"],
    "initial": ["new"],
    "transitions": {"new": ["paid", "cancelled"], "paid": ["shipped", "cancelled"]},
    "metadataSchema": {
        "type": "object",
        "properties": {
            "amount": {"type": "integer", "minimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "due": {"type": "string", "format": "date-time"},
        },
        "required": ["amount"],
    },
}


async def define(client: httpx.AsyncClient, table: Json, **params: str) -> httpx.Response:
    return await client.put(f"{MACHINES}/order", json=table, params=params)


async def defined(client: httpx.AsyncClient, table: Json = ORDER) -> Json:
    response = await define(client, table)
    assert response.status_code in (200, 201), response.text
    view: Json = response.json()
    return view


async def create(
    client: httpx.AsyncClient, entity_id: str, status: str, **extra: Any
) -> httpx.Response:
    return await client.post(ORDERS, json={"entityId": entity_id, "status": status, **extra})


def errors_of(response: httpx.Response) -> list[Json]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "metadata_invalid", body
    found: list[Json] = body["details"]["errors"]
    return found


async def test_a_definition_is_stored_versioned_and_enforced(client: httpx.AsyncClient) -> None:
    response = await define(client, ORDER)
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == '"1"'
    view = response.json()
    assert view == {
        "entity": "order",
        "statuses": ["new", "paid", "shipped", "cancelled"],
        "initial": ["new"],
        "final": ["shipped", "cancelled"],
        "transitions": {"new": ["paid", "cancelled"], "paid": ["shipped", "cancelled"]},
        "lease": None,
        "metadataSchema": ORDER["metadataSchema"],
        "source": "api",
        "version": 1,
    }
    shown = await client.get(f"{MACHINES}/order")
    assert shown.json() == view
    assert shown.headers["etag"] == '"1"'
    listed = {item["entity"]: item for item in (await client.get(MACHINES)).json()}
    assert listed["order"] == view
    assert listed["task"]["source"] == "builtin"

    refused = await create(client, "o1", "paid", metadata={"amount": 5})
    assert refused.status_code == 409, refused.text
    assert refused.json()["details"]["allowed"] == ["new"]
    unknown = await create(client, "o1", "lost", metadata={"amount": 5})
    assert unknown.json()["code"] == "unknown_status"
    assert (await create(client, "o1", "new", metadata={"amount": 5})).status_code == 201
    assert (await client.put(f"{ORDERS}/o1", json={"status": "paid"})).status_code == 200
    back = await client.put(f"{ORDERS}/o1", json={"status": "new"})
    assert back.status_code == 409
    assert back.json()["details"]["allowed"] == ["shipped", "cancelled"]


async def test_metadata_is_checked_on_every_write_and_nothing_is_written(
    client: httpx.AsyncClient,
) -> None:
    await defined(client)
    [error] = errors_of(await create(client, "o1", "new", metadata={"amount": "ten"}))
    assert error["pointer"] == "/amount"
    assert "integer" in error["reason"]
    assert (await client.get(f"{ORDERS}/o1")).status_code == 404
    # No metadata is an empty object, which lacks `amount`.
    [missing] = errors_of(await create(client, "o1", "new"))
    assert (missing["pointer"], missing["reason"]) == ("", '"amount" is a required property')
    several = errors_of(
        await create(client, "o1", "new", metadata={"amount": -1, "currency": "usd", "due": "soon"})
    )
    assert {e["pointer"] for e in several} == {"/amount", "/currency", "/due"}

    created = await create(client, "o1", "new", metadata={"amount": 10, "currency": "EUR"})
    assert created.status_code == 201, created.text
    put = errors_of(await client.put(f"{ORDERS}/o1", json={"metadata": {"amount": 1.5}}))
    assert put[0]["pointer"] == "/amount"
    # PATCH is checked after the merge: removing `amount` is refused.
    patched = errors_of(await client.patch(f"{ORDERS}/o1", json={"metadata": {"amount": None}}))
    assert patched[0]["reason"] == '"amount" is a required property'
    merged = await client.patch(f"{ORDERS}/o1", json={"metadata": {"currency": "USD"}})
    assert merged.status_code == 200, merged.text
    state = (await client.get(f"{ORDERS}/o1")).json()
    assert (state["version"], state["metadata"]) == (2, {"amount": 10, "currency": "USD"})
    # A write that leaves the metadata as it is is not checked again.
    assert (await client.put(f"{ORDERS}/o1", json={"status": "paid"})).status_code == 200


async def test_batch_items_are_checked_one_by_one(client: httpx.AsyncClient) -> None:
    await defined(client)
    items = [
        {"entityId": "b1", "status": "new", "metadata": {"amount": 1}},
        {"entityId": "b2", "status": "new", "metadata": {"amount": "two"}},
        {"entityId": "b3", "status": "new", "metadata": {"amount": 3}},
    ]
    atomic = await client.post(f"{ORDERS}/batch", json={"atomic": True, "items": items})
    assert atomic.status_code == 422, atomic.text
    [failure] = atomic.json()["details"]["failures"]
    assert (failure["index"], failure["code"]) == (1, "metadata_invalid")
    assert failure["details"]["errors"][0]["pointer"] == "/amount"
    assert (await client.get(f"{ORDERS}/b1")).status_code == 404

    each = await client.post(f"{ORDERS}/batch", json={"atomic": False, "items": items})
    assert each.status_code == 200, each.text
    results = each.json()["items"]
    assert [item["ok"] for item in results] == [True, False, True]
    assert results[1]["error"]["code"] == "metadata_invalid"
    assert (await client.get(f"{ORDERS}/b2")).status_code == 404


INVALID: dict[str, tuple[Json, str, list[str]]] = {
    "unknown status in transitions": (
        {**ORDER, "transitions": {"new": ["paid", "refunded"]}},
        "invalid_state_machine",
        ["order", "transitions.new", "refunded"],
    ),
    "unknown initial status": (
        {**ORDER, "initial": ["draft"]},
        "invalid_state_machine",
        ["initial", "draft"],
    ),
    "unreachable status": (
        {**ORDER, "transitions": {"new": ["paid"]}},
        "invalid_state_machine",
        ["shipped", "cancelled", "cannot be reached"],
    ),
    "final status with transitions": (
        {**ORDER, "final": ["paid"]},
        "invalid_state_machine",
        ["final", "paid", "outgoing"],
    ),
    "lease to an unknown status": (
        {**ORDER, "lease": {"ttl": 60, "onExpire": "expired"}},
        "invalid_state_machine",
        ["lease.onExpire", "expired"],
    ),
    "schema that is no schema": (
        {**ORDER, "metadataSchema": {"type": "objekt"}},
        "invalid_state_machine",
        ["metadataSchema is not a valid JSON Schema", "/type"],
    ),
    "reference outside the schema": (
        {**ORDER, "metadataSchema": {"$ref": "https://example.com/order.json"}},
        "invalid_state_machine",
        ["points outside the schema"],
    ),
    "reference that does not resolve": (
        {**ORDER, "metadataSchema": {"properties": {"a": {"$ref": "#/$defs/money"}}}},
        "invalid_state_machine",
        ["cannot be used", "/$defs/money", "does not exist"],
    ),
    "another type in the body": (
        {**ORDER, "entity": "invoice"},
        "invalid_state_machine",
        ["invoice", "order"],
    ),
    "invalid status name": (
        {**ORDER, "statuses": ["New"]},
        "validation_error",
        [],
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
async def test_an_invalid_definition_is_refused_naming_the_problem(
    client: httpx.AsyncClient, case: str
) -> None:
    table, code, fragments = INVALID[case]
    response = await define(client, table)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == code
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    assert (await client.get(f"{MACHINES}/order")).status_code == 404
    assert (await client.get(f"{MACHINES}/order/history")).status_code == 404


async def test_built_in_types_are_read_only(client: httpx.AsyncClient) -> None:
    response = await client.put(f"{MACHINES}/task", json=ORDER)
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "state_machine_read_only"
    assert body["details"] == {"entity": "task", "source": "builtin"}
    assert "built in" in body["message"]
    removed = await client.delete(f"{MACHINES}/user")
    assert removed.status_code == 409
    assert removed.json()["details"]["source"] == "builtin"
    assert (await client.get(f"{MACHINES}/task")).json()["statuses"][0] == "created"


async def test_a_definition_that_would_strand_states_is_refused_unless_forced(
    client: httpx.AsyncClient,
) -> None:
    # A type without a table holds any status; a definition must cover them.
    for entity_id, status in (("o1", "new"), ("o2", "lost"), ("o3", "lost"), ("o4", "paid")):
        assert (await create(client, entity_id, status)).status_code == 201
    stranding = await define(client, ORDER)
    assert stranding.status_code == 409, stranding.text
    body = stranding.json()
    assert body["code"] == "states_stranded"
    assert body["details"] == {"entity": "order", "stranded": {"lost": 2}}
    assert (await client.get(f"{MACHINES}/order")).status_code == 404

    forced = await define(client, {**ORDER, "metadataSchema": None}, force="true")
    assert forced.status_code == 201, forced.text
    # The stranded states are left as they are; they can only leave by deletion.
    lost = (await client.get(f"{ORDERS}/o2")).json()
    assert (lost["status"], lost["version"]) == ("lost", 1)
    narrower = {**ORDER, "statuses": ["new", "cancelled"], "transitions": {"new": ["cancelled"]}}
    again = await define(client, narrower)
    assert again.status_code == 409
    assert again.json()["details"]["stranded"] == {"lost": 2, "paid": 1}


async def test_if_match_and_repeats(client: httpx.AsyncClient) -> None:
    first = await defined(client)
    assert first["version"] == 1
    same = await define(client, ORDER)
    assert (same.status_code, same.json()["version"]) == (200, 1)
    wider = {**ORDER, "statuses": [*ORDER["statuses"], "refunded"]}
    wider["transitions"] = {**ORDER["transitions"], "cancelled": ["refunded"]}
    stale = await client.put(f"{MACHINES}/order", json=wider, headers={"If-Match": '"7"'})
    assert stale.status_code == 412
    assert stale.json()["details"] == {"currentVersion": 1, "expectedVersion": 7}
    fresh = await client.put(f"{MACHINES}/order", json=wider, headers={"If-Match": '"1"'})
    assert (fresh.status_code, fresh.json()["version"]) == (200, 2)
    assert fresh.headers["etag"] == '"2"'
    gone = await client.delete(f"{MACHINES}/order", headers={"If-Match": '"1"'})
    assert gone.status_code == 412
    history = (await client.get(f"{MACHINES}/order/history")).json()["items"]
    assert [item["version"] for item in history] == [1, 2]


async def test_idempotency_keys_replay_definition_changes(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "define-order-1"}
    first = await client.put(f"{MACHINES}/order", json=ORDER, headers=key)
    assert first.status_code == 201, first.text
    wider = {**ORDER, "statuses": [*ORDER["statuses"], "refunded"]}
    wider["transitions"] = {**ORDER["transitions"], "cancelled": ["refunded"]}
    assert (await define(client, wider)).json()["version"] == 2
    again = await client.put(f"{MACHINES}/order", json=ORDER, headers=key)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert (await client.get(f"{MACHINES}/order")).json()["version"] == 2
    reused = await client.put(f"{MACHINES}/order", json=wider, headers=key)
    assert reused.json()["code"] == "idempotency_key_reused"

    remove = {"Idempotency-Key": "remove-order-1"}
    assert (await client.delete(f"{MACHINES}/order", headers=remove)).status_code == 204
    replayed = await client.delete(f"{MACHINES}/order", headers=remove)
    assert replayed.status_code == 204
    assert replayed.headers["idempotent-replayed"] == "true"
    history = (await client.get(f"{MACHINES}/order/history")).json()["items"]
    assert [item["version"] for item in history] == [1, 2, 3]


async def test_removing_a_definition_leaves_the_states(client: httpx.AsyncClient) -> None:
    await defined(client)
    assert (await create(client, "o1", "new", metadata={"amount": 1})).status_code == 201
    removed = await client.delete(f"{MACHINES}/order", headers={"If-Match": '"1"'})
    assert removed.status_code == 204, removed.text
    assert (await client.get(f"{MACHINES}/order")).status_code == 404
    assert (await client.get(f"{ORDERS}/o1")).json()["status"] == "new"
    # No table: any status, any metadata.
    free = await client.put(f"{ORDERS}/o1", json={"status": "whatever", "metadata": {"x": 1}})
    assert free.status_code == 200, free.text
    assert (await client.delete(f"{MACHINES}/order")).status_code == 404
    again = await define(
        client,
        {**ORDER, "statuses": [*ORDER["statuses"], "whatever"], "initial": ["new", "whatever"]},
    )
    assert (again.status_code, again.json()["version"]) == (201, 3), again.text


async def test_the_history_of_a_definition(client: httpx.AsyncClient) -> None:
    await defined(client)
    wider = {**ORDER, "statuses": [*ORDER["statuses"], "refunded"]}
    wider["transitions"] = {**ORDER["transitions"], "cancelled": ["refunded"]}
    await defined(client, wider)
    assert (await client.delete(f"{MACHINES}/order")).status_code == 204

    page = (await client.get(f"{MACHINES}/order/history")).json()
    items = page["items"]
    assert page["nextCursor"] is None
    assert [item["version"] for item in items] == [1, 2, 3]
    assert {item["actor"] for item in items} == {"gateway"}
    assert items[0]["previous"] is None
    assert items[0]["definition"]["statuses"] == ORDER["statuses"]
    assert items[0]["definition"]["final"] == ["shipped", "cancelled"]
    assert items[1]["previous"] == items[0]["definition"]
    assert "refunded" in items[1]["definition"]["statuses"]
    assert (items[2]["previous"], items[2]["definition"]) == (items[1]["definition"], None)
    assert items[0]["revision"] < items[1]["revision"] < items[2]["revision"]

    first = (await client.get(f"{MACHINES}/order/history", params={"limit": 2})).json()
    assert len(first["items"]) == 2
    rest = await client.get(
        f"{MACHINES}/order/history", params={"limit": 2, "cursor": first["nextCursor"]}
    )
    assert [item["version"] for item in rest.json()["items"]] == [3]
    assert (await client.get(f"{MACHINES}/task/history")).json()["items"] == []
    assert (await client.get(f"{MACHINES}/parcel/history")).status_code == 404


async def test_each_change_is_a_machine_updated_event_everywhere(
    client: httpx.AsyncClient,
) -> None:
    async with running_receiver() as receiver:
        subscriptions = {}
        for events in (["*"], ["machine.*"], ["entity.*"]):
            created = await client.post(
                "/api/v1/webhooks/subscriptions",
                json={"url": receiver.url(f"/{events[0]}"), "events": events},
            )
            assert created.status_code == 201, created.text
            subscriptions[events[0]] = created.json()["id"]
        await defined(client)
        assert (await client.delete(f"{MACHINES}/order")).status_code == 204

        feed = (await client.get("/api/v1/changes", params={"after": 0})).json()["items"]
        assert [item["event"] for item in feed] == ["machine.updated", "machine.updated"]
        first, second = feed
        assert first["data"]["entity"] == "order"
        assert first["data"]["version"] == 1
        assert first["data"]["previousVersion"] is None
        assert first["data"]["definition"]["statuses"] == ORDER["statuses"]
        assert (second["data"]["version"], second["data"]["definition"]) == (2, None)
        assert second["data"]["previousVersion"] == 1

        for path in ("/*", "/machine.*"):
            delivered = await receiver.wait_for(2, path=path)
            assert [r.payload["revision"] for r in delivered] == [i["revision"] for i in feed]
            assert delivered[0].headers["x-webhook-event"] == "machine.updated"
            assert delivered[0].payload == first

        watched = await client.get(
            "/api/v1/watch", params={"after": 0, "timeout": 0, "event": "machine.updated"}
        )
        streamed = [event for event in parse_sse(watched.text) if event.event != "reset"]
        assert [event.json for event in streamed] == feed
        per_type = await client.get("/api/v1/states/order/watch", params={"after": 0, "timeout": 0})
        assert len([e for e in parse_sse(per_type.text) if e.event == "machine.updated"]) == 2
    assert receiver.at("/entity.*") == []
