"""What the definition and as-of rows need (bench/README.md), seeded once per
database through the API:

* two types defined over the API with `user`'s table (any status → any), the
  second with a 10-property `metadataSchema`, each with the same `--seed`
  states: `put_defined` and `put_schema` then differ only by the schema;
* one `user` state with HISTORY_CHANGES changes (atomic batches of BATCH items
  on the same id: one commit time per batch), whose revisions and commit times
  the as-of rows ask for.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import orjson

from bench.load import (
    DEFINED_ENTITY,
    HISTORY_ENTITY_ID,
    SCHEMA_ENTITY,
    SEED_ENTITY,
    USER_STATUSES,
    seed_id,
    ten_keys,
)
from bench.server import BENCH_API_KEY, BenchSetupError, Service

HISTORY_CHANGES = 10_000
BATCH = 100

TABLE: dict[str, object] = {"statuses": list(USER_STATUSES), "transitions": "*"}
SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        f"k{i}": {"type": "integer", "minimum": 0}
        if i % 2 == 0
        else {"type": "string", "maxLength": 64}
        for i in range(10)
    },
    "required": ["k0", "k1"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class History:
    """The as-of rows' entity: its revision range and commit times."""

    revisions: tuple[int, int]
    times: tuple[str, ...]


async def _send(
    session: aiohttp.ClientSession, service: Service, method: str, path: str, body: object
) -> object:
    headers = {"x-api-key": BENCH_API_KEY, "content-type": "application/json"}
    async with session.request(
        method, service.base_url + path, data=orjson.dumps(body), headers=headers
    ) as response:
        text = await response.text()
        if response.status not in (200, 201):
            raise BenchSetupError(
                f"seeding {method} {path} failed: HTTP {response.status}: {text[:500]}"
                f"\nserver log:\n{service.log_tail()}"
            )
        return orjson.loads(text)


async def seed_definitions(service: Service, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for entity, schema in ((DEFINED_ENTITY, None), (SCHEMA_ENTITY, SCHEMA)):
            table = TABLE if schema is None else {**TABLE, "metadataSchema": schema}
            await _send(session, service, "PUT", f"/api/v1/state-machines/{entity}", table)
            for start in range(0, count, 1000):
                items = [
                    {
                        "entityId": seed_id(i),
                        "status": USER_STATUSES[i % len(USER_STATUSES)],
                        "metadata": ten_keys(i, 0),
                    }
                    for i in range(start, min(start + 1000, count))
                ]
                path = f"/api/v1/states/{entity}/batch"
                await _send(session, service, "POST", path, {"items": items, "atomic": True})


async def seed_history(service: Service) -> History:
    revisions: list[int] = []
    times: list[str] = []
    async with aiohttp.ClientSession() as session:
        for batch in range(HISTORY_CHANGES // BATCH):
            items = [
                {
                    "entityId": HISTORY_ENTITY_ID,
                    "status": USER_STATUSES[(batch * BATCH + i) % len(USER_STATUSES)],
                    "metadata": {"change": batch * BATCH + i},
                }
                for i in range(BATCH)
            ]
            answer = await _send(
                session,
                service,
                "POST",
                f"/api/v1/states/{SEED_ENTITY}/batch",
                {"items": items, "atomic": True},
            )
            assert isinstance(answer, dict)
            for item in answer["items"]:
                revisions.append(item["state"]["revision"])
            times.append(answer["items"][-1]["state"]["updatedAt"])
    return History((revisions[0], revisions[-1]), tuple(times))
