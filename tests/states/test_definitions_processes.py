"""A definition made over the API is in force in every process within a second
(PostgreSQL: NOTIFY; SQLite: each process looks every 250 ms) and kept across
restarts; a type from STATE_MACHINES_FILE stays read-only. Real `potok-state
serve` processes beside the app of the test, on the SQL backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from potok_state.app import create_app
from potok_state.settings import Settings
from tests.conftest import BACKENDS, make_settings
from tests.support.apps import api_client, running_app
from tests.support.hub import http_service, remote_client, service_env
from tests.support.polling import eventually
from tests.support.ports import free_port

MACHINES = "/api/v1/state-machines"
ORDERS = "/api/v1/states/order"
# The promise of docs/data-model.md ("Definitions over the API").
PROPAGATION_SECONDS = 1.0

ORDER: dict[str, Any] = {
    "statuses": ["new", "paid", "cancelled"],
    "initial": ["new"],
    "transitions": {"new": ["paid", "cancelled"]},
    "metadataSchema": {"type": "object", "properties": {"amount": {"type": "integer"}}},
}


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def version_seen(client: httpx.AsyncClient, version: int | None) -> None:
    """Wait until `client`'s process shows the order table at `version` (None: none)."""

    async def seen() -> bool:
        response = await client.get(f"{MACHINES}/order")
        if version is None:
            return response.status_code == 404
        return response.status_code == 200 and response.json()["version"] == version

    await eventually(
        seen, timeout=PROPAGATION_SECONDS, interval=0.01, what=f"order table version {version}"
    )


async def test_a_definition_reaches_other_processes_and_survives_restarts(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    env = service_env(database_url)
    async with running_app(settings) as app, api_client(app) as here:
        port = free_port()
        async with http_service(port, env, tmp_path), remote_client(port) as there:
            assert (await there.get(f"{MACHINES}/order")).status_code == 404
            defined = await here.put(f"{MACHINES}/order", json=ORDER)
            assert defined.status_code == 201, defined.text
            await version_seen(there, 1)
            # Enforced there: the transitions and the metadata schema.
            invalid = await there.post(
                ORDERS, json={"entityId": "o1", "status": "new", "metadata": {"amount": "x"}}
            )
            assert invalid.json()["code"] == "metadata_invalid"
            assert invalid.json()["details"]["errors"][0]["pointer"] == "/amount"
            created = await there.post(ORDERS, json={"entityId": "o1", "status": "paid"})
            assert created.json()["code"] == "invalid_transition"

            wider = {**ORDER, "transitions": {**ORDER["transitions"], "paid": ["cancelled"]}}
            changed = await there.put(f"{MACHINES}/order", json=wider)
            assert changed.json()["version"] == 2, changed.text
            await version_seen(here, 2)

            assert (await here.delete(f"{MACHINES}/order")).status_code == 204
            await version_seen(there, None)
            free = await there.post(ORDERS, json={"entityId": "o2", "status": "anything"})
            assert free.status_code == 201, free.text

        # o2 is "anything", which the table does not have: stored all the same.
        again = await here.put(
            f"{MACHINES}/order", json={**ORDER, "initial": "*"}, params={"force": "true"}
        )
        assert again.json()["version"] == 4, again.text

    # A process started afterwards has it before its first answer.
    async with http_service(port, env, tmp_path, "restarted"), remote_client(port) as later:
        shown = await later.get(f"{MACHINES}/order")
        assert (shown.status_code, shown.json()["version"]) == (200, 4)
        assert shown.json()["initial"] == ["new", "paid", "cancelled"]
        assert (await later.post(ORDERS, json={"entityId": "o3", "status": "cancelled"})).json()[
            "status"
        ] == "cancelled"
    async with running_app(settings) as app, api_client(app) as restarted:
        history = (await restarted.get(f"{MACHINES}/order/history")).json()["items"]
        assert [(item["version"], item["definition"] is None) for item in history] == [
            (1, False),
            (2, False),
            (3, True),
            (4, False),
        ]


async def test_a_file_type_is_read_only(database_url: str, tmp_path: Path) -> None:
    file = tmp_path / "machines.yaml"
    file.write_text(
        "machines:\n  order:\n    statuses: [new, done]\n    transitions: {new: [done]}\n",
        encoding="utf-8",
    )
    settings = make_settings(database_url, state_machines_file=str(file))
    application = create_app(settings)
    async with application.router.lifespan_context(application), api_client(application) as client:
        response = await client.put(f"{MACHINES}/order", json=ORDER)
        assert response.status_code == 409
        body = response.json()
        assert body["code"] == "state_machine_read_only"
        assert body["details"] == {"entity": "order", "source": "file"}
        assert "STATE_MACHINES_FILE" in body["message"]
        assert (await client.delete(f"{MACHINES}/order")).status_code == 409
        shown = (await client.get(f"{MACHINES}/order")).json()
        assert (shown["source"], shown["statuses"]) == ("file", ["new", "done"])
