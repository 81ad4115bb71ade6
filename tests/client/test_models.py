"""The client stays in step with the service: its models are the ones the OpenAPI
document names for each route, its error body matches the service's, the blocking
client is the async one generated anew, and importing it loads no server code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from potok_state.app import create_app
from potok_state.client import ErrorBody
from potok_state.client import models as wire
from tests.conftest import make_settings

# (method, path, status, the model the client reads the answer as)
ROUTES: list[tuple[str, str, str, type[BaseModel]]] = [
    ("post", "/api/v1/states/{entity}", "201", wire.StateView),
    ("post", "/api/v1/states/{entity}", "200", wire.StateView),
    ("get", "/api/v1/states/{entity}", "200", wire.StatePage),
    ("get", "/api/v1/states/{entity}/{entity_id}", "200", wire.StateView),
    ("put", "/api/v1/states/{entity}/{entity_id}", "200", wire.StateView),
    ("patch", "/api/v1/states/{entity}/{entity_id}", "200", wire.StateView),
    ("get", "/api/v1/states/{entity}/{entity_id}/history", "200", wire.HistoryPage),
    ("post", "/api/v1/states/{entity}/batch", "200", wire.BatchResult),
    ("post", "/api/v1/states/{entity}/{entity_id}/heartbeat", "200", wire.LeaseView),
    ("post", "/api/v1/states/{entity}/heartbeat", "200", wire.BatchHeartbeatResult),
    ("get", "/api/v1/state-machines/{entity}", "200", wire.StateMachineView),
    ("get", "/api/v1/changes", "200", wire.ChangePage),
    ("post", "/api/v1/events", "201", wire.Event),
    ("post", "/api/v1/webhooks/subscriptions", "201", wire.SubscriptionCreated),
    ("get", "/api/v1/webhooks/subscriptions/{subscription_id}", "200", wire.Subscription),
    ("patch", "/api/v1/webhooks/subscriptions/{subscription_id}", "200", wire.Subscription),
    (
        "get",
        "/api/v1/webhooks/subscriptions/{subscription_id}/deliveries",
        "200",
        wire.DeliveryPage,
    ),
    ("post", "/api/v1/webhooks/deliveries/{delivery_id}/retry", "200", wire.Delivery),
    ("post", "/api/v1/webhooks/subscriptions/{subscription_id}/replay", "202", wire.ReplayResult),
    ("post", "/api/v1/webhooks/subscriptions/{subscription_id}/test", "200", wire.TestResult),
]


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    app = create_app(make_settings("sqlite+aiosqlite:///unused.db"))
    spec: dict[str, Any] = app.openapi()
    return spec


@pytest.mark.parametrize(("method", "path", "status", "model"), ROUTES)
def test_the_client_reads_each_answer_as_the_model_the_api_documents(
    openapi: dict[str, Any], method: str, path: str, status: str, model: type[BaseModel]
) -> None:
    content = openapi["paths"][path][method]["responses"][status]["content"]
    assert content["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{model.__name__}"
    }
    documented = openapi["components"]["schemas"][model.__name__]
    assert set(documented["properties"]) == set(model.model_fields)


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": sorted(schema.get("required", [])),
        "properties": {
            name: {
                key: value
                for key, value in field.items()
                if key not in {"title", "description", "default"}
            }
            for name, field in schema["properties"].items()
        },
    }


def test_the_client_error_body_matches_the_service(openapi: dict[str, Any]) -> None:
    served = openapi["components"]["schemas"]["ErrorBody"]
    ours = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    assert _shape(ours) == _shape(served)


def test_the_blocking_client_is_generated_from_the_async_one() -> None:
    # client/sync.py is client/aio.py rewritten by scripts/generate_sync_client.py;
    # a change to either that was not regenerated (`make sync-client`) fails here.
    script = Path(__file__).resolve().parents[2] / "scripts" / "generate_sync_client.py"
    checked = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_importing_the_client_and_the_receiver_kit_loads_no_server_code() -> None:
    # The error body and the request bodies' base model are shared from their own
    # pydantic-only modules of the HTTP kit.
    script = (
        "import sys, potok_state.client, potok_state.receiver; "
        "server = ('fastapi', 'starlette', 'sqlalchemy', 'redis', 'asyncpg', 'aiosqlite', "
        "'uvicorn', 'alembic', 'potok_state.app', 'potok_state.kit'); "
        "shared = {'potok_state.kit', 'potok_state.kit.error_body', "
        "'potok_state.kit.request_model'}; "
        "print(sorted(m for m in sys.modules if m not in shared and "
        "(m.split('.')[0] in server or m.startswith(server[-2:]))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
