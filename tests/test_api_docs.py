"""The docs page as a tool: every operation says what it does, every request
body has a hand-written example, and each example is accepted by the service
(run here, in the order a user would try them)."""

from __future__ import annotations

from typing import Any

import httpx

from potok_state.kit.docs import OPENAPI_PATH
from tests.conftest import make_settings
from tests.support.apps import api_client, running_app

# Where each request example is sent: concrete path parameters, in an order in
# which every example is valid (created before it is updated, and so on).
TASK = {"entity": "task", "entity_id": "task_123"}
INSTANCE = {"entity": "service", "entity_id": "billing-7f3a"}
SUB = {"subscription_id": "$sub"}
ONE_STATE = "/api/v1/states/{entity}/{entity_id}"
ONE_SUBSCRIPTION = "/api/v1/webhooks/subscriptions/{subscription_id}"
RUNS = [
    ("post", "/api/v1/states/{entity}", {"entity": "task"}, 201),
    ("put", ONE_STATE, TASK, 200),
    ("patch", ONE_STATE, TASK, 200),
    ("post", "/api/v1/states/{entity}/batch", {"entity": "process"}, 200),
    ("post", "/api/v1/events", {}, 201),
    ("post", "/api/v1/webhooks/subscriptions", {}, 201),
    ("patch", ONE_SUBSCRIPTION, SUB, 200),
    ("post", ONE_SUBSCRIPTION + "/replay", SUB, 202),
    ("post", ONE_STATE + "/heartbeat", INSTANCE, 200),
    ("post", "/api/v1/states/{entity}/heartbeat", {"entity": "service"}, 200),
]


def _schema(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        found: dict[str, Any] = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return found
    for option in schema.get("anyOf", []):
        if "$ref" in option:
            return _schema(spec, option)
    return schema


def _examples(spec: dict[str, Any], operation: dict[str, Any]) -> list[Any]:
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is None:
        return []
    examples: list[Any] = _schema(spec, body["schema"]).get("examples", [])
    return examples


async def test_every_operation_is_described_and_every_example_is_accepted(
    database_url: str,
) -> None:
    settings = make_settings(database_url, webhooks={"embedded_worker": False})
    async with running_app(settings) as app, api_client(app) as client:
        spec = (await client.get(OPENAPI_PATH)).json()
        with_body = set()
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                label = f"{method.upper()} {path}"
                assert operation.get("summary"), label
                assert operation.get("description"), label
                assert len(operation.get("tags", [])) == 1, label
                if "requestBody" in operation:
                    assert _examples(spec, operation), f"{label} has no request example"
                    with_body.add((method, path))
        assert with_body == {(method, path) for method, path, _, _ in RUNS}

        # The heartbeat examples need a registered instance.
        registered = await client.post(
            "/api/v1/states/service", json={"entityId": "billing-7f3a", "status": "up"}
        )
        assert registered.status_code == 201
        subscription = ""
        for method, path, params, status in RUNS:
            [example] = _examples(spec, spec["paths"][path][method])
            url = path.format(**{k: subscription if v == "$sub" else v for k, v in params.items()})
            response: httpx.Response = await client.request(method, url, json=example)
            assert response.status_code == status, (method, url, response.text)
            if path == "/api/v1/webhooks/subscriptions":
                subscription = response.json()["id"]
