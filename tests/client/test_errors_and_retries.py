"""Typed errors carrying the service's error body, and retries that never apply a
change twice: a real server behind a proxy that loses the answer to the first
request after the service applied it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from potok_state.client import (
    NO_RETRIES,
    AsyncPotokClient,
    BatchItem,
    BatchRejected,
    InvalidTransition,
    NotFound,
    PotokClient,
    RateLimited,
    RetryPolicy,
    TransportError,
    Unauthorized,
    ValidationFailed,
    VersionMismatch,
)
from tests.client.conftest import Service, sqlite_env
from tests.client.proxy import dropping_proxy
from tests.conftest import API_KEY
from tests.support.hub import http_service, service_env
from tests.support.ports import free_port

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_errors_carry_the_service_error_body(service: Service) -> None:
    async with AsyncPotokClient(service.url, service.api_key) as client:
        task = unique("t")
        await client.record("task", task, "in_progress")
        await client.record("task", task, "completed")

        with pytest.raises(InvalidTransition) as refused:
            await client.record("task", task, "in_progress")
        assert refused.value.status_code == 409
        assert refused.value.allowed == []
        assert refused.value.current_status == "completed"
        assert refused.value.requested_status == "in_progress"
        assert refused.value.body.error == "Conflict"
        assert refused.value.request_id

        with pytest.raises(VersionMismatch) as stale:
            await client.patch("task", task, metadata={"a": 1}, if_version=1)
        assert (stale.value.current_version, stale.value.expected_version) == (2, 1)

        with pytest.raises(NotFound) as missing:
            await client.get("task", unique("none"))
        assert missing.value.code == "state_not_found"

        with pytest.raises(ValidationFailed) as invalid:
            await client.record("task", "not an id", "created")
        assert invalid.value.code == "validation_error"
        assert invalid.value.errors

        with pytest.raises(BatchRejected) as rejected:
            await client.batch(
                "task",
                [
                    BatchItem(entityId=unique("b"), status="created"),
                    BatchItem(entityId=task, status="failed"),
                ],
            )
        failures = rejected.value.failures
        assert [failure["index"] for failure in failures if isinstance(failure, dict)] == [1]

    async with AsyncPotokClient(service.url, "not-a-key") as stranger:
        with pytest.raises(Unauthorized):
            await stranger.get("task", "x")


async def test_a_write_retried_after_a_lost_answer_is_applied_once(
    database_url: str, tmp_path: Path
) -> None:
    """On SQLite and PostgreSQL: each keeps the idempotency records its own way."""
    port = free_port()
    task = unique("t")
    async with (
        http_service(port, service_env(database_url), tmp_path) as process,
        AsyncPotokClient(f"http://127.0.0.1:{port}", API_KEY) as direct,
    ):
        service = Service(process, port, tmp_path)
        await direct.record("task", task, "in_progress", metadata={"n": 0})
        async with (
            dropping_proxy(service.port) as proxy,
            AsyncPotokClient(proxy.url, service.api_key, retry=FAST) as client,
        ):
            updated = await client.patch("task", task, metadata={"n": 1})
            assert proxy.dropped == 1
            assert proxy.connections == 2
            # The second answer is the first one replayed: one change, version 2.
            assert (updated.version, updated.metadata) == (2, {"n": 1})

            emitted = await direct.head_revision()
            proxy.drops = 1
            event = await client.emit("custom.retried", {"task": task})
            assert proxy.dropped == 2
            assert event.revision == emitted + 1

        history = [entry async for entry in direct.history("task", task)]
        assert [entry.version for entry in history] == [1, 2]
        published = [e async for e in direct.changes(emitted) if e.event == "custom.retried"]
        assert len(published) == 1


async def test_a_write_without_an_idempotency_key_is_not_sent_again(service: Service) -> None:
    user = unique("u")
    async with (
        dropping_proxy(service.port) as proxy,
        AsyncPotokClient(proxy.url, service.api_key, retry=FAST, idempotent_writes=False) as client,
    ):
        with pytest.raises(TransportError):
            await client.record("user", user, "online")
        assert proxy.connections == 1  # not sent again
        # It was applied, once; reads are retried after a lost answer.
        proxy.drops = 1
        state = await client.get("user", user)
        assert state.version == 1
        assert proxy.dropped == 2


async def test_the_sync_client_retries_the_same_way(service: Service) -> None:
    task = unique("t")

    def run(url: str) -> int:
        with PotokClient(url, service.api_key, retry=FAST) as client:
            client.record("task", task, "created")
            return client.put("task", task, status="in_progress").version

    async with dropping_proxy(service.port, drops=2) as proxy:
        version = await asyncio.to_thread(run, proxy.url)
    assert proxy.dropped == 2
    assert version == 2
    with PotokClient(service.url, service.api_key) as direct:
        assert [entry.version for entry in direct.history("task", task)] == [1, 2]


async def test_connection_refused_is_a_transport_error_after_the_retries() -> None:
    async with AsyncPotokClient(f"http://127.0.0.1:{free_port()}", "k", retry=FAST) as client:
        with pytest.raises(TransportError) as failed:
            await client.get("task", "x")
    assert failed.value.cause is not None


async def test_rate_limited_carries_retry_after_and_reads_wait_for_it(tmp_path: Path) -> None:
    port = free_port()
    env = sqlite_env(tmp_path, THROTTLE_LIMIT="3", THROTTLE_TTL="3")
    async with http_service(port, env, tmp_path):
        url = f"http://127.0.0.1:{port}"
        async with AsyncPotokClient(url, "gateway-service-key", retry=NO_RETRIES) as impatient:
            for _ in range(3):
                await impatient.head_revision()
            with pytest.raises(RateLimited) as limited:
                await impatient.head_revision()
            assert limited.value.retry_after is not None
            assert 0 < limited.value.retry_after <= 3
            assert limited.value.code == "rate_limited"
        async with AsyncPotokClient(url, "gateway-service-key", retry=FAST) as patient:
            # Over the limit again; each 429 is waited out (Retry-After) and retried.
            revisions = [await patient.head_revision() for _ in range(4)]
        assert revisions == [0] * 4
