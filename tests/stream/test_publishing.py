"""Every outbox event in NATS JetStream exactly once, in revision order, with the
feed's bytes (docs/stream.md), against a private nats-server."""

from __future__ import annotations

import httpx
import orjson
from fastapi import FastAPI
from nats.js.api import StorageType, StreamConfig

from potok_state.changes.payload import event_body
from potok_state.settings import Settings
from potok_state.storage.sql import SqlStateStore
from tests.conftest import make_settings
from tests.support.apps import api_client, running_app
from tests.support.hub import all_changes, publish
from tests.support.nats_server import NatsServer, connected, stream_count, stream_messages
from tests.support.polling import eventually

STREAM = "POTOK_TEST"
ENTITIES = 20
CHANGES_PER_ENTITY = 10


def stream_settings(database_url: str, nats: NatsServer, **extra: object) -> Settings:
    return make_settings(
        database_url,
        nats={"url": nats.url, "stream": STREAM, "publish_timeout": 500, **extra},
    )


async def wait_for_messages(nats: NatsServer, count: int, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    async def arrived() -> bool:
        return await stream_count(nats.url, STREAM) >= count

    await eventually(arrived, timeout=timeout, interval=0.05, what=f"{count} messages")


async def health(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.get("/health")
    body: dict[str, object] = response.json()
    return body


async def test_every_change_and_custom_event_is_one_message_in_revision_order(
    database_url: str, nats_server: NatsServer
) -> None:
    settings = stream_settings(database_url, nats_server)
    async with running_app(settings) as app, api_client(app) as client:
        for version in range(CHANGES_PER_ENTITY):
            for n in range(ENTITIES):
                response = await client.post(
                    "/api/v1/states/user",
                    json={
                        "entityId": f"u{n}",
                        "status": ("online", "busy")[version % 2],
                        "metadata": {"v": version},
                    },
                )
                assert response.status_code in (200, 201), response.text
        await publish(client, "custom.deploy", {"service": "billing"})
        defined = await client.put(
            "/api/v1/state-machines/order", json={"statuses": ["new"], "initial": ["new"]}
        )
        assert defined.status_code == 201, defined.text
        total = ENTITIES * CHANGES_PER_ENTITY + 2
        await wait_for_messages(nats_server, total)

        async def drained() -> bool:
            stream = (await health(client))["stream"]
            assert isinstance(stream, dict)
            return bool(stream["backlog"] == 0 and stream["status"] == "ok")

        await eventually(drained, what="the publisher to catch up")
        stored = await stream_messages(nats_server.url, STREAM)
        feed = await all_changes(client)
        records = await store_of(app).changes(0, 1000)

    assert len(stored) == total
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [item["id"] for item in feed]
    assert [m.body for m in stored] == [event_body(record) for record in records]
    assert [orjson.loads(m.body) for m in stored] == feed
    assert [int(m.headers["Potok-Revision"]) for m in stored] == [i["revision"] for i in feed]
    subjects = {m.subject for m in stored}
    assert subjects == {
        "potok.entity.created.user",
        "potok.entity.updated.user",
        "potok.custom.deploy",
        "potok.machine.updated.order",
    }
    versions: dict[str, list[int]] = {}
    for message in stored:
        data = orjson.loads(message.body)["data"]
        if message.subject.startswith("potok.entity."):
            versions.setdefault(data["id"], []).append(data["version"])
    assert versions == {f"u{n}": list(range(1, CHANGES_PER_ENTITY + 1)) for n in range(ENTITIES)}


def store_of(app: FastAPI) -> SqlStateStore:
    store: SqlStateStore = app.state.store
    return store


async def test_nats_down_loses_nothing_and_writes_go_on(
    database_url: str, nats_server: NatsServer
) -> None:
    settings = stream_settings(database_url, nats_server)
    async with running_app(settings) as app, api_client(app) as client:
        for n in range(5):
            await record_user(client, f"before{n}")
        await wait_for_messages(nats_server, 5)

        nats_server.kill()
        for n in range(50):
            await record_user(client, f"during{n}")

        async def degraded() -> dict[str, object] | None:
            stream = (await health(client))["stream"]
            assert isinstance(stream, dict)
            return stream if stream["status"] == "degraded" else None

        seen = await eventually(degraded, what="the stream to be degraded")
        assert seen["backlog"] == 50
        assert (await client.get("/health/readiness")).status_code == 200

        nats_server.start()
        await wait_for_messages(nats_server, 55)
        stored = await stream_messages(nats_server.url, STREAM)
        feed = await all_changes(client)

    ids = [m.headers["Nats-Msg-Id"] for m in stored]
    assert ids == [item["id"] for item in feed]
    assert len(set(ids)) == 55


async def test_an_existing_stream_is_used_as_it_is(
    database_url: str, nats_server: NatsServer
) -> None:
    async with connected(nats_server.url) as nats:
        await nats.jetstream().add_stream(
            StreamConfig(name=STREAM, subjects=["potok.>", "other.>"], max_msgs=10_000)
        )
    settings = stream_settings(database_url, nats_server)
    async with running_app(settings) as app, api_client(app) as client:
        await record_user(client, "u1")
        await wait_for_messages(nats_server, 1)
    async with connected(nats_server.url) as nats:
        info = await nats.jetstream().stream_info(STREAM)
    assert info.config.subjects == ["potok.>", "other.>"]
    assert info.config.max_msgs == 10_000


async def test_a_missing_stream_is_created_for_the_subject_prefix(
    database_url: str, nats_server: NatsServer
) -> None:
    settings = stream_settings(database_url, nats_server, subject_prefix="acme.states")
    async with running_app(settings) as app, api_client(app) as client:
        await record_user(client, "u1")
        await publish(client, "custom.deploy.started")
        await wait_for_messages(nats_server, 2)
    async with connected(nats_server.url) as nats:
        info = await nats.jetstream().stream_info(STREAM)
    assert info.config.subjects == ["acme.states.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == 120
    subjects = [m.subject for m in await stream_messages(nats_server.url, STREAM)]
    assert subjects == ["acme.states.entity.created.user", "acme.states.custom.deploy.started"]


async def test_health_shows_the_stream_disabled_without_nats_url(client: httpx.AsyncClient) -> None:
    body = await health(client)
    # Disabled, the stream's other fields would mean nothing: not shown.
    assert body["stream"] == {"status": "disabled"}


async def record_user(client: httpx.AsyncClient, entity_id: str) -> None:
    response = await client.post(
        "/api/v1/states/user", json={"entityId": entity_id, "status": "online"}
    )
    assert response.status_code == 201, response.text
