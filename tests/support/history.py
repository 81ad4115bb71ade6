"""Writing a state's life with distinct commit times, and reading it back as of
a revision or a time (docs/data-model.md, "Reads as of a revision or a time")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from potok_state.clock import utc_now
from tests.support.polling import eventually

TASKS = "/api/v1/states/task"

Json = dict[str, Any]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def wire(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def as_of(client: httpx.AsyncClient, entity_id: str, point: object) -> httpx.Response:
    return await client.get(f"{TASKS}/{entity_id}", params={"asOf": str(point)})


async def write(client: httpx.AsyncClient, method: str, url: str, **body: Any) -> Json:
    """Make the change, then let the clock pass its commit time, so the next
    change has a later one (times have millisecond precision)."""
    response = await client.request(method, url, json=body)
    assert response.status_code in (200, 201), response.text
    state: Json = response.json()
    stamp = parse_time(state["updatedAt"])

    async def later() -> bool:
        return utc_now() > stamp + timedelta(milliseconds=1)

    await eventually(later, what="the clock to move on")
    return state


async def life_of_t1(client: httpx.AsyncClient) -> list[Json]:
    created = await write(
        client, "POST", TASKS, entityId="t1", status="created", metadata={"step": 1}
    )
    started = await write(client, "PUT", f"{TASKS}/t1", status="in_progress")
    patched = await write(client, "PATCH", f"{TASKS}/t1", metadata={"owner": "ana"})
    failed = await write(client, "PUT", f"{TASKS}/t1", status="failed", metadata={"why": "x"})
    return [created, started, patched, failed]
