"""Transition tables: the built-ins, a STATE_MACHINES_FILE, and load-time checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from potok_state.app import create_app
from potok_state.states.machines import MachineDefinitionError, load_machines
from tests.conftest import API_KEY, make_settings

MACHINES = "/api/v1/state-machines"
STATES = "/api/v1/states"

CUSTOM = """\
machines:
  task:
    statuses: [todo, doing, done]
    initial: [todo]
    transitions:
      todo: [doing]
      doing: [done, todo]
  order:
    statuses: [placed, paid, shipped, cancelled]
    initial: [placed]
    transitions:
      placed: [paid, cancelled]
      paid: [shipped, cancelled]
    final: [shipped, cancelled]
"""


async def test_lists_the_built_in_tables(client: httpx.AsyncClient) -> None:
    response = await client.get(MACHINES)
    assert response.status_code == 200
    tables = {table["entity"]: table for table in response.json()}
    assert list(tables) == ["process", "service", "task", "user"]
    assert tables["service"]["lease"] == {"ttl": 15, "onExpire": "down"}
    assert tables["service"]["final"] == []
    assert tables["task"] == {
        "entity": "task",
        "statuses": ["created", "in_progress", "completed", "failed"],
        "initial": ["created", "in_progress"],
        "final": ["completed"],
        "transitions": {
            "created": ["in_progress", "failed"],
            "in_progress": ["completed", "failed"],
            "failed": ["in_progress"],
        },
        "lease": None,
        "metadataSchema": None,
        "source": "builtin",
        "version": None,
    }
    assert tables["process"]["initial"] == ["pending"]
    assert tables["process"]["final"] == ["finished"]
    user = tables["user"]
    assert user["initial"] == ["online", "offline", "busy"]
    assert user["final"] == []
    assert user["transitions"] == {s: ["online", "offline", "busy"] for s in user["statuses"]}
    # No lease unless a write asks for one; a lapsed one leaves the user offline.
    assert user["lease"] == {"ttl": None, "onExpire": "offline"}


async def test_one_table_and_404_for_a_free_form_type(client: httpx.AsyncClient) -> None:
    task = await client.get(f"{MACHINES}/task")
    assert task.status_code == 200
    assert task.json()["entity"] == "task"
    missing = await client.get(f"{MACHINES}/parcel")
    assert missing.status_code == 404
    assert missing.json()["code"] == "state_machine_not_found"
    assert (await client.get(f"{MACHINES}/Not_Valid")).status_code == 422


async def test_tables_need_an_api_key(client: httpx.AsyncClient) -> None:
    response = await client.get(MACHINES, headers={"x-api-key": "wrong"})
    assert response.status_code == 401


@pytest.fixture
async def custom_client(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    file = tmp_path / "machines.yaml"
    file.write_text(CUSTOM, encoding="utf-8")
    application: FastAPI = create_app(make_settings(database_url, state_machines_file=str(file)))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://potok.test", headers={"x-api-key": API_KEY}
        ) as http:
            yield http


async def test_a_file_overrides_and_extends_the_built_ins(
    custom_client: httpx.AsyncClient,
) -> None:
    tables = {t["entity"]: t for t in (await custom_client.get(MACHINES)).json()}
    assert sorted(tables) == ["order", "process", "service", "task", "user"]
    assert tables["task"]["statuses"] == ["todo", "doing", "done"]
    assert tables["task"]["final"] == ["done"]
    assert tables["order"]["final"] == ["shipped", "cancelled"]
    assert tables["process"]["initial"] == ["pending"]
    assert {entity: table["source"] for entity, table in tables.items()} == {
        "order": "file",
        "process": "builtin",
        "service": "builtin",
        "task": "file",
        "user": "builtin",
    }


async def test_a_file_table_is_enforced(custom_client: httpx.AsyncClient) -> None:
    async def record(entity: str, entity_id: str, status: str) -> httpx.Response:
        return await custom_client.post(
            f"{STATES}/{entity}", json={"entityId": entity_id, "status": status}
        )

    old_status = await record("task", "t1", "created")
    assert old_status.status_code == 422
    assert old_status.json()["code"] == "unknown_status"
    assert (await record("task", "t1", "doing")).status_code == 409
    assert (await record("task", "t1", "todo")).status_code == 201
    assert (await record("task", "t1", "doing")).status_code == 200
    assert (await record("task", "t1", "todo")).status_code == 200

    assert (await record("order", "o1", "placed")).status_code == 201
    skipped = await record("order", "o1", "shipped")
    assert skipped.status_code == 409
    assert skipped.json()["details"]["allowed"] == ["paid", "cancelled"]
    assert (await record("order", "o1", "cancelled")).status_code == 200
    after_final = await record("order", "o1", "paid")
    assert after_final.status_code == 409
    assert after_final.json()["details"]["allowed"] == []


def write(tmp_path: Path, text: str) -> str:
    file = tmp_path / "machines.yaml"
    file.write_text(text, encoding="utf-8")
    return str(file)


BROKEN = {
    "lease onExpire not a status": (
        """\
machines:
  user:
    statuses: [online, offline]
    transitions: "*"
    lease: {ttl: 60, onExpire: gone}
""",
        ["user", "lease.onExpire", "gone"],
    ),
    "lease onExpire unreachable": (
        """\
machines:
  job:
    statuses: [new, running, parked]
    initial: [new]
    transitions:
      new: [running]
      running: [parked]
      parked: [running]
    lease: {ttl: 5, onExpire: parked}
""",
        ["job", "'parked'", "cannot be reached from new"],
    ),
    "lease ttl not seconds": (
        """\
machines:
  user:
    statuses: [online, offline]
    lease: {ttl: soon, onExpire: offline}
""",
        ["user", "lease.ttl"],
    ),
    "unknown status in transitions": (
        """\
machines:
  job:
    statuses: [new, done]
    initial: [new]
    transitions:
      new: [done, archived]
""",
        ["job", "transitions.new", "unknown status", "archived"],
    ),
    "transition from an unknown status": (
        """\
machines:
  job:
    statuses: [new, done]
    initial: [new]
    transitions:
      new: [done]
      lost: [new]
""",
        ["job", "unknown status", "lost"],
    ),
    "unknown initial status": (
        """\
machines:
  job:
    statuses: [new, done]
    initial: [fresh]
    transitions: {new: [done]}
""",
        ["job", "initial", "fresh"],
    ),
    "unreachable status": (
        """\
machines:
  job:
    statuses: [new, running, done, orphan]
    initial: [new]
    transitions:
      new: [running]
      running: [done]
      orphan: [done]
""",
        ["job", "orphan", "cannot be reached"],
    ),
    "final status with outgoing transitions": (
        """\
machines:
  job:
    statuses: [new, done]
    initial: [new]
    transitions:
      new: [done]
      done: [new]
    final: [done]
""",
        ["job", "final", "done", "outgoing transitions"],
    ),
    "bad YAML": ("machines:\n  job: [unclosed\n", ["not valid YAML"]),
    "missing machines key": (
        "job:\n  statuses: [new]\n",
        ["expected a top-level 'machines:' mapping"],
    ),
    "empty file": ("", ["expected a top-level 'machines:' mapping"]),
    "invalid status name": (
        "machines:\n  job:\n    statuses: [New]\n",
        ["job", "'New'", "not a valid status name"],
    ),
    "invalid entity type name": (
        "machines:\n  Job:\n    statuses: [new]\n",
        ["'Job'", "not a valid entity type name"],
    ),
    "unknown key": (
        "machines:\n  job:\n    statuses: [new]\n    finals: [new]\n",
        ["job", "unknown key", "finals"],
    ),
    "invalid metadata schema": (
        "machines:\n  job:\n    statuses: [new]\n    metadataSchema: {type: objekt}\n",
        ["job", "metadataSchema is not a valid JSON Schema", "type"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_load_errors_name_the_problem(tmp_path: Path, case: str) -> None:
    text, fragments = BROKEN[case]
    path = write(tmp_path, text)
    with pytest.raises(MachineDefinitionError) as raised:
        load_machines(path, strict=False)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_file_is_a_load_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.yaml")
    with pytest.raises(MachineDefinitionError, match="cannot read STATE_MACHINES_FILE"):
        load_machines(path, strict=False)


def test_create_app_refuses_a_broken_file(tmp_path: Path) -> None:
    text, _ = BROKEN["unreachable status"]
    path = write(tmp_path, text)
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", state_machines_file=path)
    with pytest.raises(MachineDefinitionError, match="orphan"):
        create_app(settings)


def test_a_valid_file_loads_with_the_built_ins(tmp_path: Path) -> None:
    registry = load_machines(write(tmp_path, CUSTOM), strict=True)
    assert registry.strict
    assert [m.entity for m in registry.all()] == ["order", "process", "service", "task", "user"]
    order = registry.get("order")
    assert order is not None
    assert order.allows("placed", "paid")
    assert not order.allows("placed", "shipped")
    assert registry.get("parcel") is None
