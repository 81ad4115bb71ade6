"""GET /metrics after real traffic: every family docs/operations.md names is present
and moves (HTTP, transitions, webhook deliveries, outbox lag, cache tiers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from potok_state.app import create_app
from potok_state.metrics import Metrics
from tests.conftest import API_KEY, make_settings
from tests.ops.scrape import parse, scrape
from tests.support.hub import FAST_WEBHOOKS, record, subscribe
from tests.support.polling import eventually
from tests.support.receivers import Receiver
from tests.support.redis_server import RedisServer

STATES = "/api/v1/states/{entity}"
ONE_STATE = "/api/v1/states/{entity}/{entity_id}"


@pytest.fixture
async def observed_app(
    database_url: str, redis_servers: Callable[[], RedisServer], receiver: Receiver
) -> AsyncIterator[FastAPI]:
    """The service with a local cache tier and fast webhooks, so traffic touches
    every counted feature (the near cache is off, so reads reach the Redis tier)."""
    local = redis_servers()
    settings = make_settings(
        database_url,
        webhooks={**FAST_WEBHOOKS, "allow_private_targets": True},
        redis_local={"enabled": True, "host": "127.0.0.1", "port": local.port},
        cache={"timeout": 500, "retry_delay": 200, "near_size": 0},
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def observed(observed_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=observed_app),
        base_url="http://potok.test",
        headers={"x-api-key": API_KEY},
    ) as client:
        yield client


async def test_every_family_is_declared_and_parses(client: httpx.AsyncClient) -> None:
    families = (await scrape(client)).families
    expected = {
        "potok_http_requests": "counter",
        "potok_http_request_duration_seconds": "histogram",
        "potok_state_transitions": "counter",
        "potok_webhook_deliveries": "counter",
        "potok_webhook_delivery_duration_seconds": "histogram",
        "potok_outbox_lag_revisions": "gauge",
        "potok_cache_requests": "counter",
        "potok_watch_clients": "gauge",
    }
    assert expected.items() <= families.items()


async def test_metrics_is_public(app: FastAPI) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://potok.test"
    ) as anonymous:
        response = await anonymous.get("/metrics")
    assert response.status_code == 200
    assert "potok_http_requests_total" in response.text


async def test_traffic_moves_every_family(observed: httpx.AsyncClient, receiver: Receiver) -> None:
    before = await scrape(observed)
    await subscribe(observed, receiver.url())

    await record(observed, "task", "metrics-1", "in_progress")
    await record(observed, "task", "metrics-1", "completed")
    for _ in range(2):  # a miss fills the cache, the second read hits it
        assert (await observed.get("/api/v1/states/task/metrics-1")).status_code == 200
    assert (await observed.get("/api/v1/states/task/no-such-id")).status_code == 404
    assert (await observed.get("/no/such/route/metrics-1")).status_code == 404
    await receiver.wait_for(2)

    async def delivered() -> bool:
        after = await scrape(observed)
        return after.value("potok_webhook_deliveries_total", outcome="succeeded") >= 2

    await eventually(delivered, what="two successful deliveries in /metrics")
    after = await scrape(observed)

    def moved(sample: str, **labels: str) -> float:
        return after.value(sample, **labels) - before.value(sample, **labels)

    # HTTP: counted by route template and status, never by raw path.
    assert moved("potok_http_requests_total", route=STATES, method="POST", status="201") == 1
    assert moved("potok_http_requests_total", route=STATES, method="POST", status="200") == 1
    assert moved("potok_http_requests_total", route=ONE_STATE, method="GET", status="200") == 2
    assert moved("potok_http_requests_total", route=ONE_STATE, method="GET", status="404") == 1
    assert moved("potok_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    assert moved("potok_http_request_duration_seconds_count", route=ONE_STATE, method="GET") == 3
    assert moved("potok_http_request_duration_seconds_sum", route=ONE_STATE, method="GET") > 0
    routes = after.label_values("potok_http_requests_total", "route")
    assert not any("metrics-1" in route or "no-such-id" in route for route in routes)

    # Transitions by entity type, event and new status.
    created = {"entity": "task", "event": "entity.created", "status": "in_progress"}
    updated = {"entity": "task", "event": "entity.updated", "status": "completed"}
    assert moved("potok_state_transitions_total", **created) == 1
    assert moved("potok_state_transitions_total", **updated) == 1

    # Webhook deliveries by outcome, with latency; the outbox lag gauge is exported.
    assert moved("potok_webhook_deliveries_total", outcome="succeeded") >= 2
    assert moved("potok_webhook_delivery_duration_seconds_count") >= 2
    assert ("potok_outbox_lag_revisions", frozenset()) in after.samples

    # Cache lookups per tier and result.
    assert moved("potok_cache_requests_total", tier="local", result="miss") >= 1
    assert moved("potok_cache_requests_total", tier="local", result="hit") >= 1


async def test_an_idempotent_replay_is_not_counted_twice(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    for _ in range(2):
        response = await client.post(
            "/api/v1/states/task",
            json={"entityId": "replayed", "status": "created"},
            headers={"Idempotency-Key": "metrics-replay"},
        )
        assert response.status_code == 201, response.text
    after = await scrape(client)
    labels = {"entity": "task", "event": "entity.created", "status": "created"}
    assert (
        after.value("potok_state_transitions_total", **labels)
        - before.value("potok_state_transitions_total", **labels)
        == 1
    )


def test_parser_reads_what_the_registry_writes() -> None:
    metrics = Metrics()
    metrics.observe_request("/x/{id}", "BREW", 418, 0.003)
    scraped = parse(metrics.exposition().decode())
    assert (
        scraped.value("potok_http_requests_total", route="/x/{id}", method="OTHER", status="418")
        == 1
    )


async def test_types_without_a_table_are_counted_as_other(client: httpx.AsyncClient) -> None:
    """A client cannot grow /metrics by inventing entity types or statuses."""
    before = await scrape(client)
    for i in range(5):
        response = await client.post(
            f"/api/v1/states/invented{i}", json={"entityId": "x", "status": f"made_up_{i}"}
        )
        assert response.status_code == 201, response.text
    after = await scrape(client)
    other = {"entity": "other", "event": "entity.created", "status": "other"}
    assert (
        after.value("potok_state_transitions_total", **other)
        - before.value("potok_state_transitions_total", **other)
        == 5
    )
    entities = after.label_values("potok_state_transitions_total", "entity")
    assert not any(entity.startswith("invented") for entity in entities)


def test_no_created_series() -> None:
    metrics = Metrics()
    metrics.observe_request("/x", "GET", 200, 0.001)
    metrics.count_transition("task", "entity.created", "created")
    assert b"_created" not in metrics.exposition()
