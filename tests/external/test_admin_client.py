"""The Admin Service client against the reference server: what is retried,
what is not, timeouts and the circuit breaker. Requests are counted on the
server's side."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from potok_state.external.client import (
    AdminServiceClient,
    AdminServiceRejected,
    AdminServiceUnavailable,
    CircuitBreaker,
    CircuitOpen,
)
from tests.support.admin_service import AdminService
from tests.support.polling import eventually

COLLECTION = "things"


@pytest.fixture
async def admin(admin_service: AdminService) -> AsyncIterator[AdminServiceClient]:
    client = AdminServiceClient(
        admin_service.url,
        admin_service.api_key,
        timeout_ms=500,
        retries=2,
        breaker=CircuitBreaker(threshold=3, cooldown=0.3),
    )
    yield client
    await client.close()


async def test_the_contract_round_trip(admin: AdminServiceClient) -> None:
    created = await admin.create(COLLECTION, {"id": "a:1", "status": "new", "n": 1})
    assert created == {"id": "a:1", "status": "new", "n": 1}
    assert await admin.create(COLLECTION, {"id": "a:1"}) is None  # exists: 409
    assert await admin.update(COLLECTION, "a:1", {"status": "done"}) == {
        "id": "a:1",
        "status": "done",
        "n": 1,
    }
    assert await admin.get(COLLECTION, "a:1") == {"id": "a:1", "status": "done", "n": 1}
    await admin.create(COLLECTION, {"id": "a:2", "status": "new"})
    assert [d["id"] for d in await admin.list(COLLECTION, limit=10, status="new")] == ["a:2"]
    assert [d["id"] for d in await admin.list(COLLECTION, limit=1, offset=1)] == ["a:2"]
    assert await admin.delete(COLLECTION, "a:1") is True
    assert await admin.delete(COLLECTION, "a:1") is False
    assert await admin.get(COLLECTION, "a:1") is None
    assert await admin.update(COLLECTION, "a:1", {"status": "x"}) is None


async def test_5xx_is_retried_until_it_passes(
    admin: AdminServiceClient, admin_service: AdminService
) -> None:
    await admin_service.faults({"status": 500, "times": 2, "method": "POST"})
    assert await admin.create(COLLECTION, {"id": "r"}) is not None
    posts = await admin_service.requests("POST")
    assert [r["status"] for r in posts] == [500, 500, 201]


async def test_retries_stop_at_the_configured_count(
    admin: AdminServiceClient, admin_service: AdminService
) -> None:
    await admin_service.faults({"status": 503, "times": 100})
    with pytest.raises(AdminServiceUnavailable, match="after 3 attempts: 503"):
        await admin.get(COLLECTION, "x")
    assert len(await admin_service.requests("GET", COLLECTION)) == 3


async def test_429_waits_as_long_as_retry_after_asks(
    admin: AdminServiceClient, admin_service: AdminService
) -> None:
    await admin_service.faults({"status": 429, "times": 1, "retryAfter": "1"})
    started = time.monotonic()
    assert await admin.get(COLLECTION, "missing") is None
    assert time.monotonic() - started >= 1.0
    assert [r["status"] for r in await admin_service.requests("GET", COLLECTION)] == [429, 404]


@pytest.mark.parametrize("status", [400, 401, 403, 422])
async def test_a_4xx_is_raised_at_once_and_never_retried(
    admin: AdminServiceClient, admin_service: AdminService, status: int
) -> None:
    await admin_service.faults({"status": status, "times": 5})
    with pytest.raises(AdminServiceRejected) as raised:
        await admin.create(COLLECTION, {"id": "bad"})
    assert raised.value.status == status
    assert raised.value.message == f"injected fault: {status}"
    assert len(await admin_service.requests("POST")) == 1
    assert not admin.breaker.is_open  # it answered: it is up


async def test_a_wrong_api_key_is_a_clear_rejection(admin_service: AdminService) -> None:
    client = AdminServiceClient(admin_service.url, "wrong-key", timeout_ms=500, retries=3)
    try:
        with pytest.raises(AdminServiceRejected, match="401: Invalid API key"):
            await client.get(COLLECTION, "x")
    finally:
        await client.close()
    assert len(await admin_service.requests("GET", COLLECTION)) == 1


async def test_a_hanging_call_times_out_and_is_retried(
    admin: AdminServiceClient, admin_service: AdminService
) -> None:
    await admin_service.faults({"hang": 2.0, "times": 1, "method": "GET"})
    started = time.monotonic()
    assert await admin.get(COLLECTION, "missing") is None
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0  # one 500 ms timeout, then an answer

    async def both_seen() -> bool:  # the hung request is logged when it ends
        return len(await admin_service.requests("GET", COLLECTION)) == 2

    await eventually(both_seen, timeout=5)


async def test_the_circuit_opens_costs_nothing_and_closes(
    admin: AdminServiceClient, admin_service: AdminService
) -> None:
    await admin_service.faults({"status": 500, "times": 9})  # three calls of three attempts
    for _ in range(3):
        with pytest.raises(AdminServiceUnavailable):
            await admin.get(COLLECTION, "x")
    assert admin.breaker.is_open
    with pytest.raises(CircuitOpen):
        await admin.get(COLLECTION, "x")
    assert len(await admin_service.requests("GET", COLLECTION)) == 9  # no call went out

    async def probe_closes_it() -> bool:
        try:
            await admin.get(COLLECTION, "x")
        except CircuitOpen:
            return False
        return True

    await eventually(probe_closes_it, timeout=5, interval=0.05)
    assert not admin.breaker.is_open
    assert len(await admin_service.requests("GET", COLLECTION)) == 10


async def test_a_failed_probe_keeps_it_open_longer(
    admin: AdminServiceClient, admin_service: AdminService
) -> None:
    await admin_service.kill()
    for _ in range(3):
        with pytest.raises(AdminServiceUnavailable):
            await admin.get(COLLECTION, "x")
    assert admin.breaker.is_open
    first_cooldown = admin.breaker.cooldown

    async def probed() -> bool:
        try:
            await admin.get(COLLECTION, "x")
        except CircuitOpen:
            return False
        except AdminServiceUnavailable:
            return True
        return False

    await eventually(probed, timeout=5, interval=0.05)
    assert admin.breaker.is_open
    assert admin.breaker.cooldown == 2 * first_cooldown
