"""Scale-out on PostgreSQL: separate `potok-state worker` processes share the
delivery queue (FOR UPDATE SKIP LOCKED, woken by LISTEN/NOTIFY) and send every
event exactly once to a receiver that always answers 200 (docs/data-model.md)."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

from tests.conftest import reset_postgres
from tests.support.hub import (
    ServiceProcess,
    all_changes,
    http_service,
    remote_client,
    service_env,
    settled_deliveries,
    subscribe,
)
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.receivers import running_receiver

EVENTS = 2000
WORKERS = 2


def attempts_logged(worker: ServiceProcess) -> int:
    return worker.log.count('"event": "webhook.attempt"')


async def test_two_workers_deliver_each_event_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    await reset_postgres(postgres_url)
    api_port = free_port()
    env = service_env(postgres_url, WEBHOOK_EMBEDDED_WORKER="false")
    worker_env = {**env, "LOG_LEVEL": "info"}  # each attempt is logged at info
    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(running_receiver())
        await stack.enter_async_context(http_service(api_port, env, tmp_path))
        client = await stack.enter_async_context(remote_client(api_port))
        workers = [
            ServiceProcess(["worker"], worker_env, tmp_path, f"worker-{n}") for n in range(WORKERS)
        ]
        for worker in workers:
            await worker.start()
            stack.push_async_callback(worker.stop)
        sub = await subscribe(client, receiver.url())

        for chunk in range(EVENTS // 1000):
            response = await client.post(
                "/api/v1/states/user/batch",
                json={
                    "items": [
                        {"entityId": f"u{chunk}-{n}", "status": "online"} for n in range(1000)
                    ]
                },
            )
            assert response.status_code == 200, response.text

        await receiver.wait_for(EVENTS, timeout=150)
        log = await settled_deliveries(client, sub["id"], EVENTS, timeout=30)
        expected = {change["id"] for change in await all_changes(client)}
        # Let any stray duplicate show up before counting.
        await asyncio.sleep(0.5)

        seen = Counter(request.event_id for request in receiver.requests)
        assert len(expected) == EVENTS
        assert set(seen) == expected, "none missed"
        assert max(seen.values()) == 1, "none twice"
        assert all(d["status"] == "succeeded" and d["attempts"] == 1 for d in log)

        async def both_worked() -> list[int] | None:
            per_worker = [attempts_logged(worker) for worker in workers]
            return per_worker if sum(per_worker) == EVENTS else None

        per_worker = await eventually(both_worked, what="every attempt logged")
        assert all(count > 0 for count in per_worker), per_worker
