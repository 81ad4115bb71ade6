"""The write-side findings of the hostile-remote review, replayed with its inputs
against the real server on SQLite and PostgreSQL (private targets refused):

* one `Idempotency-Key` makes one subscription and one secret rotation;
* coerced JSON types (`"ttl":"10"`, `"ttl":true`, `{"active":"yes"}`,
  `{"fromRevision":"1"}`) are a 422 naming the field;
* a replay over `WEBHOOK_REPLAY_MAX` is a 422 with the count, nothing queued;
* `http://[::127.0.0.1]/` is refused at creation, and a name that resolves only
  to loopback fails its delivery with an error that says so;
* `If-Match: W/"1"` names what was sent, and so does the 412.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from potok_state.webhooks.targets import is_private_address
from tests.support.hub import http_service, remote_client, service_env
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.receivers import Receiver

STATES = "/api/v1/states"
SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"
NOWHERE = "https://hooks.example.com/potok"


@pytest.fixture
async def remote(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `potok-state serve` with private targets refused and a small
    WEBHOOK_REPLAY_MAX; the server's log must show no error at the end."""
    port = free_port()
    env = service_env(
        database_url,
        WEBHOOK_ALLOW_PRIVATE_TARGETS="false",
        WEBHOOK_REPLAY_MAX="5",
        WEBHOOK_RETRY_DELAY="50",
    )
    async with http_service(port, env, tmp_path) as server, remote_client(port) as client:
        yield client
    assert "Traceback" not in server.log
    assert '"status": 500' not in server.log


def loopback_name() -> str:
    """This machine's host name, which its resolver maps to a loopback or
    private address (the test needs such a name and says so if it has none)."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    assert addresses, f"{name} does not resolve"
    assert all(is_private_address(str(address)) for address in addresses), (
        f"{name} resolves to {addresses}: this test needs a name that resolves only to "
        "private or loopback addresses"
    )
    return name


async def test_one_key_makes_one_subscription_and_one_rotation(remote: httpx.AsyncClient) -> None:
    body = {"url": NOWHERE, "events": ["custom.never-published"]}
    key = {"Idempotency-Key": "create-once"}
    first = await remote.post(SUBSCRIPTIONS, json=body, headers=key)
    second = await remote.post(SUBSCRIPTIONS, json=body, headers=key)
    assert first.status_code == second.status_code == 201, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert len((await remote.get(SUBSCRIPTIONS)).json()) == 1

    rotate = f"{SUBSCRIPTIONS}/{first.json()['id']}/rotate-secret"
    key = {"Idempotency-Key": "rotate-once"}
    rotated = await remote.post(rotate, json={}, headers=key)
    retried = await remote.post(rotate, json={}, headers=key)
    assert rotated.status_code == retried.status_code == 200, retried.text
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.json() == rotated.json()
    # One rotation: the grace period is still the first one's (a second
    # rotation would have moved it, and dropped the original secret).
    shown = (await remote.get(f"{SUBSCRIPTIONS}/{first.json()['id']}")).json()
    assert shown["previousSecretExpiresAt"] == rotated.json()["previousSecretExpiresAt"]


async def test_coerced_types_are_refused_naming_the_field(remote: httpx.AsyncClient) -> None:
    subscribed = await remote.post(
        SUBSCRIPTIONS, json={"url": NOWHERE, "events": ["custom.never-published"]}
    )
    sub = subscribed.json()["id"]
    inputs = [
        ("POST", f"{STATES}/user", {"entityId": "u1", "status": "online", "ttl": "10"}, "ttl"),
        ("POST", f"{STATES}/user", {"entityId": "u1", "status": "online", "ttl": True}, "ttl"),
        ("PATCH", f"{SUBSCRIPTIONS}/{sub}", {"active": "yes"}, "active"),
        ("POST", f"{SUBSCRIPTIONS}/{sub}/replay", {"fromRevision": "1"}, "fromRevision"),
    ]
    for method, path, body, field in inputs:
        response = await remote.request(method, path, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["details"]["errors"][0]["location"] == ["body", field]
        assert f"body.{field}:" in response.json()["message"]
    assert (await remote.get("/api/v1/changes")).json()["items"] == []
    assert (await remote.get(f"{SUBSCRIPTIONS}/{sub}")).json()["status"] == "active"


async def test_a_replay_over_the_limit_queues_nothing(remote: httpx.AsyncClient) -> None:
    subscribed = await remote.post(SUBSCRIPTIONS, json={"url": NOWHERE, "events": ["entity.*"]})
    sub = subscribed.json()["id"]
    # Paused: what it misses is recorded as skipped, and nothing is sent.
    assert (await remote.patch(f"{SUBSCRIPTIONS}/{sub}", json={"active": False})).is_success
    for n in range(8):
        await remote.post(f"{STATES}/task", json={"entityId": f"t{n}", "status": "created"})

    async def logged() -> list[object] | None:
        log = await remote.get(f"{SUBSCRIPTIONS}/{sub}/deliveries")
        items: list[object] = log.json()["items"]
        return items if len(items) == 8 else None

    before = await eventually(logged, what="8 skipped deliveries")
    refused = await remote.post(f"{SUBSCRIPTIONS}/{sub}/replay", json={"fromRevision": 1})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "replay_too_large"
    assert refused.json()["details"]["count"] == 8
    assert refused.json()["details"]["limit"] == 5
    after = await remote.get(f"{SUBSCRIPTIONS}/{sub}/deliveries")
    assert after.json()["items"] == before


async def test_loopback_targets_are_refused_at_creation_and_at_delivery(
    remote: httpx.AsyncClient, receiver: Receiver
) -> None:
    literal = await remote.post(
        SUBSCRIPTIONS, json={"url": f"http://[::127.0.0.1]:{receiver.port}/", "events": ["*"]}
    )
    assert literal.status_code == 422, literal.text
    assert literal.json()["code"] == "invalid_webhook_url"

    name = loopback_name()
    subscribed = await remote.post(
        SUBSCRIPTIONS,
        json={"url": f"http://{name}:{receiver.port}/hook", "events": ["*"], "maxAttempts": 1},
    )
    assert subscribed.status_code == 201, subscribed.text
    await remote.post(f"{STATES}/task", json={"entityId": "t1", "status": "created"})

    async def failed() -> dict[str, object] | None:
        log = await remote.get(f"{SUBSCRIPTIONS}/{subscribed.json()['id']}/deliveries")
        items = log.json()["items"]
        return items[0] if items and items[0]["status"] == "failed" else None

    delivery = await eventually(failed, what="the delivery to fail")
    error = delivery["lastError"]
    assert isinstance(error, str)
    assert error.startswith(f"{name} resolves only to private, loopback or link-local addresses")
    assert "WEBHOOK_ALLOW_PRIVATE_TARGETS=false" in error
    assert "[None]" not in error
    attempts = delivery["attemptLog"]
    assert isinstance(attempts, list)
    assert [attempt["error"] for attempt in attempts] == [error]
    assert receiver.requests == []


async def test_if_match_messages_name_what_was_sent(remote: httpx.AsyncClient) -> None:
    for status in ("created", "in_progress"):
        await remote.post(f"{STATES}/task", json={"entityId": "t1", "status": status})
    weak = await remote.put(
        f"{STATES}/task/t1", json={"status": "completed"}, headers={"If-Match": 'W/"1"'}
    )
    assert weak.status_code == 400, weak.text
    assert 'W/"1"' in weak.json()["message"]
    stale = await remote.put(
        f"{STATES}/task/t1", json={"status": "completed"}, headers={"If-Match": '"1"'}
    )
    assert stale.status_code == 412, stale.text
    assert stale.json()["message"] == "task 't1' is at version 2; the request expected version 1."
    assert (await remote.get(f"{STATES}/task/t1")).json()["version"] == 2
