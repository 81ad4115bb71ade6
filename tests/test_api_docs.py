"""The docs page as a tool: every operation says what it does, every request
body has a hand-written example, and each example is accepted by the service
(run here, in the order a user would try them); every response the spec
documents has an example that its own model reads back unchanged; every
schema property and every response says what it means, and the statuses a
route can answer besides its own are listed (408/413 for a body, 503 for a
change that the external backend's full backlog refuses, /health's 503)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from potok_state.app import create_app
from potok_state.events.schemas import Event
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
    ("post", ONE_SUBSCRIPTION + "/rotate-secret", SUB, 200),
    ("post", ONE_STATE + "/heartbeat", INSTANCE, 200),
    ("post", "/api/v1/states/{entity}/heartbeat", {"entity": "service"}, 200),
    ("put", "/api/v1/state-machines/{entity}", {"entity": "order"}, 201),
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
            url = path.format(**{k: subscription if v == "$sub" else v for k, v in params.items()})
            for example in _examples(spec, spec["paths"][path][method]):
                response: httpx.Response = await client.request(method, url, json=example)
                assert response.status_code == status, (method, url, example, response.text)
                if path == "/api/v1/webhooks/subscriptions":
                    subscription = response.json()["id"]


def _wire_models() -> dict[str, type[BaseModel]]:
    """The service's pydantic models by class name, the schema name the spec gives
    them (FastAPI would qualify a name two models shared, and the lookup would fail)."""
    models: dict[str, type[BaseModel]] = {}
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        for model in pending.pop().__subclasses__():
            pending.append(model)
            # The client's and the receiver kit's models are not answers of the server.
            server_side = not model.__module__.startswith(
                ("potok_state.client", "potok_state.receiver")
            )
            if model.__module__.startswith("potok_state.") and server_side:
                models[model.__name__] = model
    return models


def _response_schemas(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(label, media type, schema) of every documented response body, success and error."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    if "schema" in content:  # /metrics: Prometheus text, no JSON shape
                        yield f"{method.upper()} {path} {status} {media}", media, content["schema"]


def test_every_response_has_an_example_its_model_reads_back(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/potok-state.db"))
    spec = app.openapi()
    models = _wire_models()
    checked: set[str] = set()
    for label, media, schema in _response_schemas(spec):
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
        if ref is None:
            # An inline shape (the watch stream's events): its examples sit on it.
            assert schema.get("examples"), f"{label} has no response example"
            assert media == "text/event-stream", label
            for example in schema["examples"]:
                # Each event's data is the change-feed JSON, byte for byte.
                event = Event.model_validate_json(example["data"])
                assert event.model_dump_json() == example["data"], label
                assert (example["id"], example["event"]) == (str(event.revision), event.event)
            continue
        name = ref.rsplit("/", 1)[1]
        assert name in models, f"{label}: no model named {name}"
        examples = spec["components"]["schemas"][name].get("examples")
        assert examples, f"{label}: {name} has no response example"
        # The page shows the examples as written (FastAPI would drop their nulls).
        assert examples == models[name].model_json_schema()["examples"], name
        checked.add(name)
        for example in examples:
            # Read back unchanged, fields in the order the service writes them: a
            # field the model lacks, or a value it would write differently, fails.
            read = models[name].model_validate(example).model_dump(mode="json", exclude_unset=True)
            assert json.dumps(read) == json.dumps(example), name
    assert {"StateView", "Subscription", "ErrorBody", "Health"} <= checked


# FastAPI's words when a route says nothing of its answer.
DEFAULT_DESCRIPTIONS = {"", "Successful Response", "Validation Error"}
# The writes that go through the change pipeline: with the external backend and
# its backlog full, they get 503 external_backlog_full.
CHANGE_WRITES = {
    ("post", "/api/v1/states/{entity}"),
    ("put", ONE_STATE),
    ("patch", ONE_STATE),
    ("delete", ONE_STATE),
    ("post", "/api/v1/states/{entity}/batch"),
    ("post", "/api/v1/events"),
}


def _properties(name: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for prop, found in schema.get("properties", {}).items():
        yield f"{name}.{prop}", found
        yield from _properties(f"{name}.{prop}", found)


def test_every_property_and_every_response_is_described(tmp_path: Path) -> None:
    spec = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/potok-state.db")).openapi()
    inline = [
        (label, schema)
        for label, _, schema in _response_schemas(spec)
        if "$ref" not in schema and "items" not in schema
    ]
    named = list(spec["components"]["schemas"].items())
    undescribed = [
        label
        for name, schema in [*named, *inline]
        for label, prop in _properties(name, schema)
        if not prop.get("description")
    ]
    assert not undescribed, f"properties without a description: {undescribed}"
    assert len([label for name, schema in named for label, _ in _properties(name, schema)]) > 150

    writes_with_503 = set()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            responses = operation["responses"]
            for status, response in responses.items():
                assert response.get("description") not in DEFAULT_DESCRIPTIONS, (label, status)
            if "requestBody" in operation:
                assert {"408", "413"} <= set(responses), label
            if "503" in responses and method != "get":
                writes_with_503.add((method, path))
    assert writes_with_503 == CHANGE_WRITES
    health = spec["paths"]["/health"]["get"]["responses"]
    assert health["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/Health")
