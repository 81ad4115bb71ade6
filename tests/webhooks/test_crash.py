"""No loss on crash: the real server is killed with SIGKILL while deliveries are
queued and failing, restarted, and every event still arrives (DESIGN.md §4:
at-least-once from the transactional outbox)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.webhooks.hub import (
    all_changes,
    deliveries,
    http_service,
    remote_client,
    service_env,
    settled_deliveries,
    subscribe,
)
from tests.webhooks.receivers import eventually, free_port, running_receiver

EVENTS = 200


async def test_kill_9_then_restart_delivers_every_event(database_url: str, tmp_path: Path) -> None:
    receiver_port, api_port = free_port(), free_port()
    env = service_env(
        database_url,
        WEBHOOK_RETRY_DELAY="20",
        WEBHOOK_MAX_RETRIES="20",
        WEBHOOK_DELIVERY_TIMEOUT="1000",
        WEBHOOK_MAX_CONSECUTIVE_FAILURES="1000000",
    )
    async with http_service(api_port, env, tmp_path, "first") as first:
        async with remote_client(api_port) as client:
            # Nothing listens there yet: every attempt is refused.
            sub = await subscribe(client, f"http://127.0.0.1:{receiver_port}/hook")
            batch = await client.post(
                "/api/v1/states/user/batch",
                json={
                    "items": [{"entityId": f"u{n}", "status": "online"} for n in range(EVENTS // 2)]
                },
            )
            assert batch.status_code == 200, batch.text
            published = await asyncio.gather(
                *(
                    client.post("/api/v1/events", json={"type": "custom.crash", "data": {"n": n}})
                    for n in range(EVENTS // 2)
                )
            )
            assert all(p.status_code == 201 for p in published)

            async def retrying() -> bool:
                return any(d["attempts"] > 0 for d in await deliveries(client, sub["id"]))

            # Killed while deliveries are queued, some already retrying.
            await eventually(retrying, what="the first failed attempts")
        await first.kill()
        assert first.process is not None
        assert first.process.returncode == -9

    async with http_service(api_port, env, tmp_path, "second"), remote_client(api_port) as client:
        expected = {change["id"] for change in await all_changes(client)}
        assert len(expected) == EVENTS
        async with running_receiver(receiver_port) as receiver:

            async def all_arrived() -> bool:
                return expected <= {r.event_id for r in receiver.requests}

            await eventually(all_arrived, timeout=60, interval=0.1, what="all events")
            log = await settled_deliveries(client, sub["id"], EVENTS, timeout=30)

        assert {d["eventId"] for d in log} == expected
        assert all(d["status"] == "succeeded" for d in log)
        by_id: dict[str, set[bytes]] = {}
        for request in receiver.requests:
            assert request.headers["x-webhook-id"] == request.event_id
            assert request.payload["id"] == request.event_id
            by_id.setdefault(request.event_id, set()).add(request.body)
        # A repeat (an attempt cut short by the kill) is the same message.
        assert all(len(bodies) == 1 for bodies in by_id.values())
