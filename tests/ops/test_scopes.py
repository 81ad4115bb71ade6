"""Scoped API keys (docs/operations.md, "API keys and scopes"): each scope and
each type limit enforced on states, batches, heartbeats, events, webhooks,
machines, the change feed and the watch stream; the 403 names the scope and the
type; a malformed entry stops the start, named."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError

from potok_state.app import create_app
from potok_state.kit.auth import ApiKeyAuth, PartialReadAuth
from potok_state.settings import Settings
from tests.conftest import make_settings
from tests.ops.scrape import parse
from tests.support.sse import SseEvent, parse_sse

KEYS = ",".join(
    [
        "gateway:full-key",
        "dashboard:read-key:read",
        "producer:write-key:write",
        "ops:admin-key:admin",
        "billing:billing-key:read+write@invoice|payment",
        "auditor:invoice-reader-key:read@invoice",
        "orders:order-admin-key:admin@order",
    ]
)


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url, api_keys=KEYS))
    async with application.router.lifespan_context(application):
        yield application


def as_key(app: FastAPI, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://potok.test",
        headers={"x-api-key": key},
    )


def assert_forbidden(response: httpx.Response, key: str, scope: str, entity: str | None) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "forbidden"
    assert body["error"] == "Forbidden"
    assert body["details"] == {"key": key, "scope": scope, "entity": entity}
    assert scope in body["message"]
    if entity is not None:
        assert repr(entity) in body["message"]


async def test_read_and_write_scopes_on_states(app: FastAPI) -> None:
    async with (
        as_key(app, "read-key") as dashboard,
        as_key(app, "write-key") as producer,
        as_key(app, "full-key") as gateway,
    ):
        created = await producer.post(
            "/api/v1/states/task", json={"entityId": "t1", "status": "created"}
        )
        assert created.status_code == 201, created.text
        assert (
            await producer.put("/api/v1/states/task/t1", json={"status": "in_progress"})
        ).status_code == 200
        assert_forbidden(await producer.get("/api/v1/states/task/t1"), "producer", "read", "task")
        assert_forbidden(await producer.get("/api/v1/states/task"), "producer", "read", "task")
        assert_forbidden(
            await producer.get("/api/v1/states/task/t1/history"), "producer", "read", "task"
        )

        assert (await dashboard.get("/api/v1/states/task/t1")).status_code == 200
        assert (await dashboard.get("/api/v1/states/task")).status_code == 200
        assert (await dashboard.get("/api/v1/states/task/t1/history")).status_code == 200
        for response in (
            await dashboard.post(
                "/api/v1/states/task", json={"entityId": "t2", "status": "created"}
            ),
            await dashboard.put("/api/v1/states/task/t1", json={"status": "completed"}),
            await dashboard.patch("/api/v1/states/task/t1", json={"metadata": {"a": 1}}),
            await dashboard.delete("/api/v1/states/task/t1"),
            await dashboard.post(
                "/api/v1/states/task/batch",
                json={"atomic": True, "items": [{"entityId": "t3", "status": "created"}]},
            ),
            await dashboard.post("/api/v1/states/task/t1/heartbeat", json={}),
            await dashboard.post("/api/v1/states/task/heartbeat", json={"ids": ["t1"]}),
        ):
            assert_forbidden(response, "dashboard", "write", "task")
        # Nothing the refused writes asked for happened.
        state = (await gateway.get("/api/v1/states/task/t1")).json()
        assert (state["status"], state["version"]) == ("in_progress", 2)
        assert (await gateway.get("/api/v1/states/task/t3")).status_code == 404


async def test_a_type_limit_holds_on_writes_batches_and_reads(app: FastAPI) -> None:
    async with (
        as_key(app, "billing-key") as billing,
        as_key(app, "invoice-reader-key") as auditor,
        as_key(app, "full-key") as gateway,
    ):
        assert (
            await billing.post("/api/v1/states/invoice", json={"entityId": "i1", "status": "open"})
        ).status_code == 201
        batch = await billing.post(
            "/api/v1/states/payment/batch",
            json={"atomic": True, "items": [{"entityId": "p1", "status": "pending"}]},
        )
        assert batch.status_code == 200, batch.text
        assert_forbidden(
            await billing.post("/api/v1/states/task", json={"entityId": "t1", "status": "created"}),
            "billing",
            "write",
            "task",
        )
        assert_forbidden(
            await billing.post(
                "/api/v1/states/task/batch",
                json={"atomic": True, "items": [{"entityId": "t1", "status": "created"}]},
            ),
            "billing",
            "write",
            "task",
        )
        assert (await gateway.get("/api/v1/states/task/t1")).status_code == 404
        # billing reads every type: its read scope has no limit.
        assert (
            await gateway.post("/api/v1/states/task", json={"entityId": "t9", "status": "created"})
        ).status_code == 201
        assert (await billing.get("/api/v1/states/task/t9")).status_code == 200

        assert (await auditor.get("/api/v1/states/invoice/i1")).status_code == 200
        assert_forbidden(await auditor.get("/api/v1/states/task/t9"), "auditor", "read", "task")
        assert_forbidden(await auditor.get("/api/v1/states/payment"), "auditor", "read", "payment")
        assert_forbidden(
            await auditor.post("/api/v1/states/invoice", json={"entityId": "i2", "status": "open"}),
            "auditor",
            "write",
            "invoice",
        )


async def test_custom_events_need_write_on_every_type(app: FastAPI) -> None:
    event = {"type": "custom.deploy", "data": {"version": "1.2"}}
    async with as_key(app, "billing-key") as billing, as_key(app, "write-key") as producer:
        assert_forbidden(await billing.post("/api/v1/events", json=event), "billing", "write", None)
        assert (await producer.post("/api/v1/events", json=event)).status_code == 201


async def test_webhooks_need_the_admin_scope(app: FastAPI) -> None:
    subscription = {"url": "http://127.0.0.1:9/hook", "events": ["*"]}
    async with (
        as_key(app, "full-key") as gateway,
        as_key(app, "admin-key") as ops,
        as_key(app, "write-key") as producer,
        as_key(app, "read-key") as dashboard,
    ):
        created = await ops.post("/api/v1/webhooks/subscriptions", json=subscription)
        assert created.status_code == 201, created.text
        subscription_id = created.json()["id"]
        assert (await ops.get("/api/v1/webhooks/subscriptions")).status_code == 200
        assert (
            await gateway.get(f"/api/v1/webhooks/subscriptions/{subscription_id}")
        ).status_code == 200
        for client, name in ((producer, "producer"), (dashboard, "dashboard")):
            for response in (
                await client.post("/api/v1/webhooks/subscriptions", json=subscription),
                await client.get("/api/v1/webhooks/subscriptions"),
                await client.get(f"/api/v1/webhooks/subscriptions/{subscription_id}"),
                await client.patch(
                    f"/api/v1/webhooks/subscriptions/{subscription_id}", json={"active": False}
                ),
                await client.delete(f"/api/v1/webhooks/subscriptions/{subscription_id}"),
                await client.post(f"/api/v1/webhooks/subscriptions/{subscription_id}/test"),
            ):
                assert_forbidden(response, name, "admin", None)
        listed = (await ops.get("/api/v1/webhooks/subscriptions")).json()
        assert [item["id"] for item in listed] == [subscription_id]
        assert listed[0]["status"] == "active"


async def test_the_feed_shows_only_the_types_a_key_reads(app: FastAPI) -> None:
    async with (
        as_key(app, "full-key") as gateway,
        as_key(app, "invoice-reader-key") as auditor,
        as_key(app, "write-key") as producer,
    ):
        for entity, entity_id, status in (
            ("task", "t1", "created"),
            ("invoice", "i1", "open"),
            ("task", "t2", "created"),
            ("invoice", "i2", "open"),
        ):
            response = await gateway.post(
                f"/api/v1/states/{entity}", json={"entityId": entity_id, "status": status}
            )
            assert response.status_code == 201
        await gateway.post("/api/v1/events", json={"type": "custom.deploy", "data": {}})

        everything = (await gateway.get("/api/v1/changes", params={"after": 0})).json()
        assert len(everything["items"]) == 5

        first = (await auditor.get("/api/v1/changes", params={"after": 0, "limit": 2})).json()
        assert [item["data"]["id"] for item in first["items"]] == ["i1"]
        assert first["nextAfter"] == 2
        rest = (await auditor.get("/api/v1/changes", params={"after": 2})).json()
        assert [item["data"]["id"] for item in rest["items"]] == ["i2"]
        assert rest["nextAfter"] == 5
        assert_forbidden(await producer.get("/api/v1/changes"), "producer", "read", None)


async def test_the_watch_stream_shows_only_the_types_a_key_reads(app: FastAPI) -> None:
    async with as_key(app, "full-key") as gateway, as_key(app, "invoice-reader-key") as auditor:
        for entity, entity_id, status in (
            ("task", "t1", "created"),
            ("invoice", "i1", "open"),
            ("invoice", "i2", "open"),
        ):
            await gateway.post(
                f"/api/v1/states/{entity}", json={"entityId": entity_id, "status": status}
            )
        await gateway.post("/api/v1/events", json={"type": "custom.deploy", "data": {}})

        replay = {"after": 0, "timeout": 0}
        seen = events_of(await auditor.get("/api/v1/watch", params=replay))
        assert [event.json["data"]["id"] for event in seen] == ["i1", "i2"]
        everything = events_of(await gateway.get("/api/v1/watch", params=replay))
        assert len(everything) == 4

        own = events_of(await auditor.get("/api/v1/states/invoice/watch", params=replay))
        assert len(own) == 2
        assert_forbidden(
            await auditor.get("/api/v1/states/task/watch", params=replay), "auditor", "read", "task"
        )


async def test_machines_are_listed_for_the_types_a_key_reads(app: FastAPI) -> None:
    async with as_key(app, "invoice-reader-key") as auditor, as_key(app, "read-key") as dashboard:
        everything = (await dashboard.get("/api/v1/state-machines")).json()
        assert {machine["entity"] for machine in everything} >= {"task", "user"}
        assert (await auditor.get("/api/v1/state-machines")).json() == []
        assert_forbidden(
            await auditor.get("/api/v1/state-machines/task"), "auditor", "read", "task"
        )


async def test_machine_definitions_need_the_admin_scope_on_their_type(app: FastAPI) -> None:
    table = {"statuses": ["new", "done"], "transitions": {"new": ["done"]}, "initial": ["new"]}
    async with (
        as_key(app, "admin-key") as ops,
        as_key(app, "order-admin-key") as orders,
        as_key(app, "read-key") as dashboard,
        as_key(app, "write-key") as producer,
    ):
        defined = await orders.put("/api/v1/state-machines/order", json=table)
        assert defined.status_code == 201, defined.text
        assert_forbidden(
            await orders.put("/api/v1/state-machines/invoice", json=table),
            "orders",
            "admin",
            "invoice",
        )
        for client, name in ((dashboard, "dashboard"), (producer, "producer")):
            assert_forbidden(
                await client.put("/api/v1/state-machines/order", json=table), name, "admin", "order"
            )
            assert_forbidden(
                await client.delete("/api/v1/state-machines/order"), name, "admin", "order"
            )
        assert (await dashboard.get("/api/v1/state-machines/order/history")).status_code == 200
        assert_forbidden(
            await producer.get("/api/v1/state-machines/order/history"), "producer", "read", "order"
        )
        # The admin scope alone reads nothing.
        assert_forbidden(
            await orders.get("/api/v1/state-machines/order/history"), "orders", "read", "order"
        )
        assert (await ops.delete("/api/v1/state-machines/order")).status_code == 204


async def test_refusals_are_counted_by_key_name_never_the_key(app: FastAPI) -> None:
    async with as_key(app, "read-key") as dashboard:
        for _ in range(2):
            await dashboard.delete("/api/v1/states/task/t1")
        exposition = (await dashboard.get("/metrics")).text
    forbidden = parse(exposition).value(
        "potok_auth_forbidden_total", key="dashboard", scope="write"
    )
    assert forbidden == 2
    assert "read-key" not in exposition


@pytest.mark.parametrize("app_env", ["production", "development"])
@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("billing:KEY-0123456789abcdef:reed", "unknown scope 'reed'"),
        ("billing:KEY-0123456789abcdef:read@Invoice", "invalid entity types"),
        ("billing:KEY-0123456789abcdef:read+", "unknown scope ''"),
        (":KEY-0123456789abcdef:read", "needs a name and a key"),
    ],
)
def test_a_malformed_entry_stops_the_start_named(app_env: str, entry: str, problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate(
            {
                "app_env": app_env,
                "api_keys": f"gateway:gateway-0123456789abcdef,{entry}",
                "webhooks": {"secret_key": "a-real-secret-0123456789"},
            }
        )
    message = str(raised.value)
    assert problem in message
    assert "KEY-0123456789abcdef" not in message
    if not entry.startswith(":"):
        assert "'billing'" in message


def events_of(response: httpx.Response) -> list[SseEvent]:
    assert response.status_code == 200, response.text
    return [event for event in parse_sse(response.text) if event.event != "reset"]


def test_every_api_route_declares_the_scope_it_needs(app: FastAPI) -> None:
    """A new route cannot forget its scope: each one under /api/v1 depends on
    one of the scope checks of kit/auth.py."""
    unguarded = []
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/api/v1"):
            continue
        calls = [dependency.call for dependency in route.dependant.dependencies]
        if not any(isinstance(call, ApiKeyAuth | PartialReadAuth) for call in calls):
            unguarded.append(f"{sorted(route.methods or ())} {route.path}")
    assert unguarded == []
