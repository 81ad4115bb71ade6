"""The receiver kit on real deliveries from the service's worker: both signature
schemes, several secrets, tampered bodies, stale timestamps, duplicates (a replay
sends the same event again), and the Starlette/FastAPI, aiohttp and Flask adapters
serving real receivers."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import flask
import httpx
import pytest
import uvicorn
from aiohttp import web
from fastapi import FastAPI
from redis.asyncio import Redis as AsyncRedis
from starlette.applications import Starlette
from starlette.routing import Route

from potok_state.client import AsyncPotokClient
from potok_state.receiver import (
    AsyncRedisDedupStore,
    EntityChange,
    MemoryDedupStore,
    MissingSignature,
    ReceivedEvent,
    RedisDedupStore,
    SignatureMismatch,
    StaleTimestamp,
    WebhookReceiver,
    aiohttp_handler,
    flask_view,
    starlette_endpoint,
    verify,
)
from potok_state.webhooks.signing import signature_headers
from tests.client.conftest import Service
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.receivers import Received, running_receiver
from tests.support.redis_server import RedisServer

PLAIN_SECRET = "plain-secret-of-the-receiver"
OTHER_SECRET = "whsec_" + base64.b64encode(b"someone else's secret").decode()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[AsyncPotokClient]:
    async with AsyncPotokClient(service.url, service.api_key) as potok:
        yield potok


def tampered(body: bytes) -> bytes:
    return body.replace(b'"version":', b'"version":1', 1)


async def test_verify_real_deliveries_with_both_schemes(client: AsyncPotokClient) -> None:
    entity = f"kit{uuid.uuid4().hex[:6]}"
    async with running_receiver() as receiver:
        plain = await client.create_subscription(
            receiver.url("/plain"), ["entity.*"], entity_types=[entity], secret=PLAIN_SECRET
        )
        generated = await client.create_subscription(
            receiver.url("/generated"), ["entity.*"], entity_types=[entity]
        )
        await client.record(entity, "a", "one", metadata={"k": "v"})
        await client.record(entity, "a", "two", reason="moved")
        deliveries = {
            PLAIN_SECRET: await receiver.wait_for(2, path="/plain"),
            generated.secret: await receiver.wait_for(2, path="/generated"),
        }
        for secret, received in deliveries.items():
            for delivery in received:
                _check_delivery(delivery, secret)

        # Duplicates: a replay sends the same events (same webhook-id) again.
        gate = WebhookReceiver(PLAIN_SECRET)
        first = [gate.accept(d.headers, d.body) for d in deliveries[PLAIN_SECRET]]
        assert all(event is not None for event in first)
        change = first[1].change if first[1] is not None else None
        assert change is not None
        assert (change.previousStatus, change.newStatus, change.reason) == ("one", "two", "moved")
        assert (await client.replay(plain.id, from_revision=0)).scheduled == 2
        again = (await receiver.wait_for(4, path="/plain"))[2:]
        assert [d.headers["webhook-id"] for d in again] == [
            d.headers["webhook-id"] for d in deliveries[PLAIN_SECRET]
        ]
        assert [gate.accept(d.headers, d.body) for d in again] == [None, None]


def _check_delivery(delivery: Received, secret: str) -> None:
    headers, body = delivery.headers, delivery.body
    verify(headers, body, secret)
    verify(headers, body, secret, scheme="sha256")
    # Rotation: any of several secrets, any of several signatures; header names in
    # any case.
    verify({k.upper(): v for k, v in headers.items()}, body, [OTHER_SECRET, secret])
    several = f"v1,{base64.b64encode(b'x' * 32).decode()} {headers['webhook-signature']}"
    verify({**headers, "webhook-signature": several}, body, secret)
    for scheme in ("standard", "sha256"):
        with pytest.raises(SignatureMismatch):
            verify(headers, body, OTHER_SECRET, scheme=scheme)
        with pytest.raises(SignatureMismatch):
            verify(headers, tampered(body), secret, scheme=scheme)
    sent_at = int(headers["webhook-timestamp"])
    verify(headers, body, secret, now=sent_at + 299)
    with pytest.raises(StaleTimestamp):
        verify(headers, body, secret, now=sent_at + 301)
    with pytest.raises(StaleTimestamp):
        verify(headers, body, secret, now=sent_at - 301)
    with pytest.raises(MissingSignature):
        verify({k: v for k, v in headers.items() if k != "webhook-signature"}, body, secret)
    # The typed event: the whole payload, and an entity change with every field.
    event = WebhookReceiver(secret).open(headers, body)
    assert event.id == headers["webhook-id"]
    assert event.attempt == 1
    assert event.event.model_dump(mode="json") == delivery.payload
    assert set(delivery.payload["data"]) == set(EntityChange.model_fields)


def test_a_bounded_memory_store_forgets_the_oldest() -> None:
    store = MemoryDedupStore(max_entries=2)
    assert [store.claim(key) for key in ("a", "b", "a", "c", "b", "a")] == [
        True,
        True,
        False,
        True,  # "b" is now the oldest and goes
        True,
        True,
    ]
    store.release("a")
    assert store.claim("a")


class Handled:
    """What a receiver app's handler saw; raises once when told to."""

    def __init__(self) -> None:
        self.events: list[ReceivedEvent] = []
        self.fail_next = False

    async def __call__(self, received: ReceivedEvent) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the handler failed")
        self.events.append(received)


@asynccontextmanager
async def aiohttp_app(gate: WebhookReceiver, handled: Handled) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hooks", aiohttp_handler(gate, handled))
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def starlette_app(gate: WebhookReceiver, handled: Handled) -> AsyncIterator[str]:
    app = Starlette(routes=[Route("/hooks", starlette_endpoint(gate, handled), methods=["POST"])])
    async with serving(app) as url:
        yield url


@asynccontextmanager
async def fastapi_app(gate: WebhookReceiver, handled: Handled) -> AsyncIterator[str]:
    app = FastAPI()
    app.add_api_route("/hooks", starlette_endpoint(gate, handled), methods=["POST"])
    async with serving(app) as url:
        yield url


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), what="the Starlette receiver")
    try:
        yield f"http://127.0.0.1:{port}/hooks"
    finally:
        server.should_exit = True
        await serving


async def _started(server: uvicorn.Server) -> bool:
    return server.started


ServeApp = Callable[[WebhookReceiver, Handled], AbstractAsyncContextManager[str]]


@pytest.mark.parametrize(
    "serve", [aiohttp_app, starlette_app, fastapi_app], ids=["aiohttp", "starlette", "fastapi"]
)
async def test_an_adapter_handles_each_event_once_and_refuses_forgeries(
    client: AsyncPotokClient,
    serve: ServeApp,
) -> None:
    entity = f"app{uuid.uuid4().hex[:6]}"
    handled = Handled()
    gate = WebhookReceiver(PLAIN_SECRET)
    async with serve(gate, handled) as url:
        created = await client.create_subscription(
            url, ["entity.*"], entity_types=[entity], secret=PLAIN_SECRET
        )
        await client.record(entity, "a", "one")
        await client.record(entity, "b", "one")
        await eventually(lambda: _count(handled, 2), what="two handled events")

        # A replay brings both again: acknowledged, not handled twice.
        await client.replay(created.id, from_revision=0)
        await eventually(lambda: _deliveries_succeeded(client, created.id, 4), what="the replay")
        assert len(handled.events) == 2

        # A failing handler: 500, the claim is released, the retry is handled.
        handled.fail_next = True
        await client.record(entity, "a", "two")
        failed = await eventually(lambda: _failed(client, created.id), what="a failed delivery")
        await client.retry_delivery(failed)
        await eventually(lambda: _count(handled, 3), what="the retried event")
        assert handled.events[-1].change == EntityChange(
            entity=entity, id="a", version=2, previousStatus="one", newStatus="two", metadata={}
        )

        # Forged, tampered and stale requests never reach the handler; a body
        # signed with the secret that is not an event is a 400.
        body = custom_event("evt_forged")
        now = int(time.time())
        async with httpx.AsyncClient() as http:
            answers = [
                (await http.post(url, content=content, headers=headers)).status_code
                for content, headers in (
                    (body, {"webhook-id": "evt_forged"}),
                    (tampered_event(body), signed(body, now)),
                    (body, signed(body, now - 600)),
                    (b"not json", signed(b"not json", now)),
                )
            ]
            assert answers == [401, 401, 401, 400]
            assert len(handled.events) == 3
            good = await http.post(url, content=body, headers=signed(body, now))
            assert good.status_code == 204
        assert handled.events[-1].id == "evt_forged"
        await client.delete_subscription(created.id)


def custom_event(event_id: str) -> bytes:
    head = f'{{"id":"{event_id}","event":"custom.x","revision":1,'
    return head.encode() + b'"timestamp":"2026-01-01T00:00:00.000Z","data":{}}'


def signed(body: bytes, timestamp: int) -> dict[str, str]:
    return signature_headers(
        PLAIN_SECRET,
        event_id="evt_forged",
        event="custom.x",
        body=body,
        attempt=1,
        timestamp=timestamp,
    )


def tampered_event(body: bytes) -> bytes:
    return body.replace(b'"revision":1', b'"revision":2')


async def _count(handled: Handled, count: int) -> bool:
    return len(handled.events) >= count


async def _deliveries_succeeded(client: AsyncPotokClient, subscription_id: str, count: int) -> bool:
    log = [d async for d in client.deliveries(subscription_id)]
    return len(log) >= count and all(d.status == "succeeded" for d in log)


async def _failed(client: AsyncPotokClient, subscription_id: str) -> int | None:
    async for delivery in client.deliveries(subscription_id):
        if delivery.status == "failed":
            assert delivery.lastStatusCode == 500
            return delivery.id
    return None


def test_the_flask_view_verifies_and_dedupes() -> None:
    handled: list[ReceivedEvent] = []
    app = flask.Flask(__name__)
    app.add_url_rule(
        "/hooks",
        view_func=flask_view(WebhookReceiver(PLAIN_SECRET), handled.append),
        methods=["POST"],
    )
    body = custom_event("evt_f")
    headers = signature_headers(
        PLAIN_SECRET,
        event_id="evt_f",
        event="custom.x",
        body=body,
        attempt=1,
        timestamp=int(time.time()),
    )
    with app.test_client() as http:
        assert http.post("/hooks", data=body, headers=headers).status_code == 204
        assert http.post("/hooks", data=body, headers=headers).status_code == 204
        assert http.post("/hooks", data=body + b" ", headers=headers).status_code == 401
    assert [event.id for event in handled] == ["evt_f"]


def test_redis_stores_share_claims_between_processes(
    redis_servers: Callable[[], RedisServer],
) -> None:
    server = redis_servers()
    with server.client() as one, server.client() as other:
        first, second = RedisDedupStore(one, ttl_seconds=60), RedisDedupStore(other)
        assert first.claim("evt_1")
        assert not second.claim("evt_1")  # another process sees the claim
        assert 0 < one.ttl("potok:webhook:evt_1") <= 60
        second.release("evt_1")
        assert first.claim("evt_1")


async def test_an_async_redis_store_dedupes_signed_deliveries(
    redis_servers: Callable[[], RedisServer],
) -> None:
    server = redis_servers()
    client = AsyncRedis(host="127.0.0.1", port=server.port)
    try:
        gate = WebhookReceiver(PLAIN_SECRET, store=AsyncRedisDedupStore(client))
        body = custom_event("evt_redis")
        headers = signed(body, int(time.time()))
        received = await gate.accept_async(headers, body)
        assert received is not None
        assert await gate.accept_async(headers, body) is None
        await gate.release_async(received)
        assert await gate.accept_async(headers, body) is not None
        with pytest.raises(TypeError):
            gate.accept(headers, body)  # an async store needs accept_async
    finally:
        await client.aclose()
