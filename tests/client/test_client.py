"""Every method of `AsyncPotokClient` against the real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from potok_state.client import AsyncPotokClient, BatchItem, NoLease, NotFound, PotokClient
from tests.client.conftest import Service
from tests.support.polling import eventually
from tests.support.receivers import Reply, running_receiver


@pytest.fixture
async def client(service: Service) -> AsyncIterator[AsyncPotokClient]:
    async with AsyncPotokClient(service.url, service.api_key) as potok:
        yield potok


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_record_get_put_patch_delete_and_history(client: AsyncPotokClient) -> None:
    task = unique("t")
    created = await client.record(
        "task", task, "in_progress", metadata={"assignee": "u7", "priority": "high"}
    )
    assert (created.entity, created.entityId, created.status, created.version) == (
        "task",
        task,
        "in_progress",
        1,
    )
    assert (await client.get("task", task)) == created

    patched = await client.patch(
        "task", task, metadata={"priority": None, "team": "a"}, if_version=1
    )
    assert patched.metadata == {"assignee": "u7", "team": "a"}  # merged; None removed a key
    put = await client.put("task", task, status="completed", metadata={"x": 1}, reason="done")
    assert (put.status, put.metadata, put.version) == ("completed", {"x": 1}, 3)

    history = [entry async for entry in client.history("task", task, page_size=2)]
    assert [(h.version, h.previousStatus, h.newStatus) for h in history] == [
        (1, None, "in_progress"),
        (2, "in_progress", "in_progress"),
        (3, "in_progress", "completed"),
    ]
    assert history[2].reason == "done"
    assert history[0].actor == "gateway"

    # As it was: by revision, and by time.
    assert (await client.get("task", task, as_of=created.revision)) == created
    assert (await client.get("task", task, as_of=patched.updatedAt)).version in (2, 3)
    assert (await client.get("task", task, as_of=put.revision)) == put

    await client.delete("task", task, if_version=3)
    with pytest.raises(NotFound) as gone:
        await client.get("task", task, as_of=put.revision + 1)
    assert gone.value.code == "state_deleted"
    with pytest.raises(NotFound) as missing:
        await client.get("task", task)
    assert missing.value.code == "state_not_found"
    assert [h.event async for h in client.history("task", task)][-1] == "entity.deleted"


async def test_query_follows_cursors_across_pages(client: AsyncPotokClient) -> None:
    entity = unique("q")
    ids = [f"e{i:02d}" for i in range(7)]
    for entity_id in ids:
        await client.record(entity, entity_id, "on" if entity_id != "e03" else "off")
    await client.record(entity, "e05", "on", metadata={"zone": "eu"})

    seen = [state.entityId async for state in client.query(entity, sort="entityId", page_size=2)]
    assert seen == ids
    on = [s.entityId async for s in client.query(entity, status=["on"], sort="-entityId")]
    assert on == [i for i in reversed(ids) if i != "e03"]
    # One status as a plain string is that status, not its letters.
    just_on = [s.entityId async for s in client.query(entity, status="on", sort="-entityId")]
    assert just_on == on
    assert [s.entityId for s in (await client.query_page(entity, status="off")).items] == ["e03"]
    zoned = [s.entityId async for s in client.query(entity, metadata={"zone": "eu"})]
    assert zoned == ["e05"]

    page = await client.query_page(entity, sort="entityId", limit=3)
    assert [s.entityId for s in page.items] == ids[:3]
    assert page.next_cursor is not None
    assert page.revision >= max(s.revision for s in page.items)
    assert page.revision <= await client.head_revision()


async def test_batch_changes_and_emit(client: AsyncPotokClient) -> None:
    start = await client.head_revision()
    ids = [unique("p"), unique("p")]
    result = await client.batch("process", [BatchItem(entityId=i, status="pending") for i in ids])
    assert (result.atomic, result.succeeded, result.failed) == (True, 2, 0)
    mixed = await client.batch(
        "process",
        [
            BatchItem(entityId=ids[0], status="running"),
            BatchItem(entityId=ids[1], status="finished"),
        ],
        atomic=False,
    )
    assert [item.ok for item in mixed.items] == [True, False]
    assert mixed.items[1].error is not None
    assert mixed.items[1].error.code == "invalid_transition"

    published = await client.emit("custom.deploy", {"service": "billing"})
    assert published.event == "custom.deploy"
    assert published.data == {"service": "billing"}

    changes = [event async for event in client.changes(start, page_size=2)]
    assert [event.revision for event in changes] == list(range(start + 1, published.revision + 1))
    assert changes[-1] == published
    assert {event.data.get("id") for event in changes[:3]} == set(ids)


async def test_heartbeats_and_state_machines(client: AsyncPotokClient) -> None:
    instance = unique("billing")
    registered = await client.record("service", instance, "up", metadata={"name": "billing"})
    assert registered.lease is not None
    assert registered.lease.ttl == 15
    lease = await client.heartbeat("service", instance, ttl=20)
    assert lease.ttl == 20
    many = await client.heartbeat_many("service", [instance, "nobody-here"])
    assert (many.renewed, many.failed) == (1, 1)
    assert many.items[1].error == "state_not_found"

    plain = unique("u")
    await client.record("user", plain, "online")
    with pytest.raises(NoLease):
        await client.heartbeat("user", plain)

    machines = {machine.entity: machine for machine in await client.state_machines()}
    assert machines["service"].lease is not None
    assert (await client.state_machine("task")).transitions["created"] == [
        "in_progress",
        "failed",
    ]


async def test_subscriptions_deliveries_retry_and_replay(client: AsyncPotokClient) -> None:
    entity = unique("hooked")
    async with running_receiver() as receiver:
        created = await client.create_subscription(
            receiver.url(), ["entity.*"], entity_types=[entity], description="client test"
        )
        assert created.secret.startswith("whsec_")
        assert created.id in {s.id for s in await client.subscriptions()}
        assert (await client.subscription(created.id)).description == "client test"

        first = await client.record(entity, "a", "one")
        await receiver.wait_for(1)
        ping = await client.ping_subscription(created.id)
        assert ping.succeeded

        receiver.answer(then=Reply(status=500))
        await client.record(entity, "a", "two")
        failed = await eventually(lambda: _failed_delivery(client, created.id), what="a failure")
        receiver.answer(then=Reply(status=200))
        retried = await client.retry_delivery(failed)
        assert retried.id == failed
        await eventually(lambda: _all_succeeded(client, created.id), what="the retry")

        replayed = await client.replay(created.id, from_revision=first.revision - 1)
        assert replayed.scheduled == 2
        await receiver.wait_for(5)
        only_first = await client.replay(
            created.id, from_revision=first.revision - 1, to_revision=first.revision
        )
        assert (only_first.scheduled, only_first.toRevision) == (1, first.revision)

        paused = await client.update_subscription(created.id, active=False, events=["*"])
        assert (paused.status, paused.events) == ("disabled", ["*"])
        await client.delete_subscription(created.id)
        with pytest.raises(NotFound):
            await client.subscription(created.id)


async def _failed_delivery(client: AsyncPotokClient, subscription_id: str) -> int | None:
    async for delivery in client.deliveries(subscription_id, page_size=1):
        if delivery.status == "failed":
            assert len(delivery.attemptLog) == delivery.attempts
            return delivery.id
    return None


async def _all_succeeded(client: AsyncPotokClient, subscription_id: str) -> bool:
    log = [delivery async for delivery in client.deliveries(subscription_id)]
    return bool(log) and all(delivery.status == "succeeded" for delivery in log)


async def test_the_sync_client_calls_the_same_api(service: Service) -> None:
    def run() -> None:
        entity = unique("sync")
        with PotokClient(service.url, service.api_key) as client:
            start = client.head_revision()
            first = client.record(entity, "a", "on", metadata={"k": 1})
            client.batch(entity, [BatchItem(entityId="b", status="on")], atomic=False)
            assert client.patch(entity, "a", metadata={"j": 2}).metadata == {"k": 1, "j": 2}
            assert client.get(entity, "a", as_of=first.revision) == first
            assert [s.entityId for s in client.query(entity, sort="entityId", page_size=1)] == [
                "a",
                "b",
            ]
            assert client.query_page(entity, limit=1).next_cursor is not None
            client.emit("custom.sync")
            assert [e.event for e in client.changes(start, page_size=2)] == [
                "entity.created",
                "entity.created",
                "entity.updated",
                "custom.sync",
            ]
            client.delete(entity, "b")
            assert [h.newStatus for h in client.history(entity, "b")] == ["on", None]
            client.record(entity, "c", "off")
            assert [s.entityId for s in client.query(entity, status="off")] == ["c"]
            both = client.query(entity, status=("on", "off"), sort="entityId")
            assert [s.entityId for s in both] == ["a", "c"]
            instance = unique("svc")
            client.record("service", instance, "up")
            assert client.heartbeat_many("service", [instance]).renewed == 1
            assert client.heartbeat_many("service", instance).renewed == 1
            assert client.state_machine("service").lease is not None
            created = client.create_subscription("http://127.0.0.1:9/nobody", "custom.*")
            assert created.events == ["custom.*"]
            assert created.id in {s.id for s in client.subscriptions()}
            updated = client.update_subscription(created.id, entity_types="task")
            assert updated.entityTypes == ["task"]
            assert list(client.deliveries(created.id)) == []
            client.delete_subscription(created.id)

    await asyncio.to_thread(run)
