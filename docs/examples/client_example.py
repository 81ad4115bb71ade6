"""Service discovery with the Potok client: register an instance, heartbeat, find
the instances that are up, and watch them come and go.

Run against a service (`make run`):

    POTOK_URL=http://localhost:3002 POTOK_API_KEY=gateway-service-key \
        python docs/examples/client_example.py

`mypy --strict` checks this file (pyproject.toml), as a user's code would be checked.
"""

from __future__ import annotations

import asyncio
import uuid

from potok_state.client import AsyncPotokClient, InvalidTransition, PotokClient
from potok_state.client.models import Event, StateView


def register(client: PotokClient, name: str, url: str) -> StateView:
    instance = f"{name}-{uuid.uuid4().hex[:6]}"
    # `service` states hold a 15 s lease: heartbeats keep the instance listed.
    state = client.record("service", instance, "up", metadata={"name": name, "url": url})
    lease = client.heartbeat("service", instance)
    print(f"registered {instance} at revision {state.revision}; lease until {lease.expiresAt}")
    return state


def instances_up(client: PotokClient, name: str) -> list[str]:
    return [
        str(state.metadata["url"])
        for state in client.query("service", status=["up"], metadata={"name": name})
    ]


async def watch_changes(after: int, count: int) -> list[Event]:
    """The next `count` changes of services after revision `after`."""
    seen: list[Event] = []
    async with AsyncPotokClient() as client:
        async for event in client.watch("service", after=after):
            seen.append(event)
            if len(seen) == count:
                break
    return seen


def main() -> None:
    with PotokClient() as client:  # POTOK_URL and POTOK_API_KEY
        state = register(client, "billing", "http://10.0.3.7:8080")
        print("billing instances up:", instances_up(client, "billing"))
        try:
            client.record("service", state.entityId, "starting")  # up → starting is not allowed
        except InvalidTransition as refused:
            print(f"refused: {refused.message} (allowed: {refused.allowed})")
        client.record("service", state.entityId, "draining", reason="deploy")
        client.delete("service", state.entityId)

    for event in asyncio.run(watch_changes(after=state.revision, count=2)):
        print(event.revision, event.event, event.data.get("newStatus"))


if __name__ == "__main__":
    main()
