"""`Idempotency-Key` on every write of the webhooks API (docs/guarantees.md,
"Idempotency keys"): a retry is answered the first answer, with
`Idempotent-Replayed: true`, and does nothing again; the same key with another
request is a 422; keys are the caller's own."""

from __future__ import annotations

import asyncio

import httpx

from potok_state.receiver import verify
from tests.support.database import fetch_all
from tests.support.hub import (
    deliveries,
    in_process,
    publish,
    record,
    settled_deliveries,
    subscribe,
    subscription,
    webhook_settings,
)
from tests.support.receivers import Receiver, Reply

SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"
OLD = "the-secret-before-rotation"
SERVICE_KEY = "the-first-service-key-0123"
NEW_SERVICE_KEY = "the-second-service-key-456"


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def replayed(response: httpx.Response) -> bool:
    header: str | None = response.headers.get("idempotent-replayed")
    return header == "true"


async def test_one_key_creates_one_subscription_and_replays_its_secret(
    hub: httpx.AsyncClient, receiver: Receiver, database_url: str
) -> None:
    body = {"url": receiver.url(), "events": ["custom.*"]}
    first = await hub.post(SUBSCRIPTIONS, json=body, headers=key("create-1"))
    second = await hub.post(SUBSCRIPTIONS, json=body, headers=key("create-1"))
    assert first.status_code == second.status_code == 201, second.text
    assert not replayed(first)
    assert replayed(second)
    # The whole first answer, the generated secret included: the retry is the
    # caller that may never have seen it.
    assert second.json() == first.json()
    assert first.json()["secret"].startswith("whsec_")
    assert [s["id"] for s in (await hub.get(SUBSCRIPTIONS)).json()] == [first.json()["id"]]
    # At rest the replayed secret is encrypted, as the subscription's own is.
    stored = await fetch_all(database_url, "SELECT outcome FROM idempotency_keys")
    assert stored
    assert all(first.json()["secret"].encode() not in bytes(row[0]) for row in stored)

    different = await hub.post(
        SUBSCRIPTIONS, json={**body, "description": "another"}, headers=key("create-1")
    )
    assert different.status_code == 422, different.text
    assert different.json()["code"] == "idempotency_key_reused"
    # Keys are per caller: another API key's same key is its own.
    other = await hub.post(
        SUBSCRIPTIONS, json=body, headers={**key("create-1"), "x-api-key": "admin-key"}
    )
    assert other.status_code == 201, other.text
    assert not replayed(other)
    assert other.json()["id"] != first.json()["id"]


async def test_concurrent_creates_with_one_key_make_one_subscription(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    body = {"url": receiver.url(), "events": ["custom.*"]}
    answers = await asyncio.gather(
        *(hub.post(SUBSCRIPTIONS, json=body, headers=key("racing")) for _ in range(5))
    )
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len({a.json()["secret"] for a in answers}) == 1
    assert sum(not replayed(a) for a in answers) == 1
    assert len((await hub.get(SUBSCRIPTIONS)).json()) == 1


async def test_a_retried_rotation_rotates_once_and_keeps_the_grace_secret(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub = await subscribe(hub, receiver.url(), ["entity.*"], secret=OLD)
    rotate = f"{SUBSCRIPTIONS}/{sub['id']}/rotate-secret"
    first = await hub.post(rotate, json={}, headers=key("rotate-1"))
    retry = await hub.post(rotate, json={}, headers=key("rotate-1"))
    assert first.status_code == retry.status_code == 200, retry.text
    assert replayed(retry)
    assert retry.json() == first.json()
    new = first.json()["secret"]
    assert (await subscription(hub, sub["id"]))["previousSecretExpiresAt"] == first.json()[
        "previousSecretExpiresAt"
    ]

    await record(hub, "task", "t1", "created")
    [delivery] = await receiver.wait_for(1)
    # Signed with the new secret and, for the grace period, the one before the
    # (single) rotation: a second rotation would have dropped OLD.
    assert len(delivery.headers["webhook-signature"].split()) == 2
    verify(delivery.headers, delivery.body, new)
    verify(delivery.headers, delivery.body, OLD)


async def test_patch_delete_retry_replay_and_ping_answer_a_retry_once(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub = await subscribe(hub, receiver.url(), ["custom.*"], maxAttempts=1)
    path = f"{SUBSCRIPTIONS}/{sub['id']}"

    patched = await hub.patch(path, json={"description": "first"}, headers=key("patch-1"))
    await hub.patch(path, json={"description": "changed since"})
    again = await hub.patch(path, json={"description": "first"}, headers=key("patch-1"))
    assert again.status_code == 200, again.text
    assert replayed(again)
    assert again.json() == patched.json()
    assert (await subscription(hub, sub["id"]))["description"] == "changed since"

    # A failed delivery, retried twice with one key: sent once more, not twice.
    receiver.answer(Reply(500))
    await publish(hub, "custom.once")
    [failed] = await settled_deliveries(hub, sub["id"], 1)
    assert failed["status"] == "failed"
    retry = f"/api/v1/webhooks/deliveries/{failed['id']}/retry"
    retried = await hub.post(retry, headers=key("retry-1"))
    assert retried.status_code == 200, retried.text
    [done] = await settled_deliveries(hub, sub["id"], 1)
    assert done["status"] == "succeeded"
    retried_again = await hub.post(retry, headers=key("retry-1"))
    assert retried_again.status_code == 200, retried_again.text
    assert replayed(retried_again)
    assert retried_again.json() == retried.json()
    assert len(receiver.requests) == 2
    without_key = await hub.post(retry)
    assert without_key.status_code == 409  # the same call without a key is judged again

    # A replay retried with its key queues its deliveries once.
    replay = f"{path}/replay"
    queued = await hub.post(replay, json={"fromRevision": 1}, headers=key("replay-1"))
    queued_again = await hub.post(replay, json={"fromRevision": 1}, headers=key("replay-1"))
    assert queued.status_code == queued_again.status_code == 202, queued_again.text
    assert replayed(queued_again)
    assert (
        queued_again.json()
        == queued.json()
        == {
            "scheduled": 1,
            "fromRevision": 1,
            "toRevision": queued.json()["toRevision"],
        }
    )
    await settled_deliveries(hub, sub["id"], 2)
    assert len(await deliveries(hub, sub["id"])) == 2

    # The ping: one request to the receiver, the retry answered the first result.
    pinged = await hub.post(f"{path}/test", headers=key("ping-1"))
    pinged_again = await hub.post(f"{path}/test", headers=key("ping-1"))
    assert replayed(pinged_again)
    assert pinged_again.json() == pinged.json()
    assert [r.payload["event"] for r in receiver.requests].count("webhook.test") == 1

    deleted = await hub.delete(path, headers=key("delete-1"))
    deleted_again = await hub.delete(path, headers=key("delete-1"))
    assert deleted.status_code == deleted_again.status_code == 204, deleted_again.text
    assert replayed(deleted_again)
    assert deleted_again.content == b""
    assert (await hub.delete(path)).status_code == 404


async def test_refusals_are_not_remembered(hub: httpx.AsyncClient, receiver: Receiver) -> None:
    missing = f"{SUBSCRIPTIONS}/sub_{'0' * 24}"
    for _ in range(2):
        refused = await hub.post(f"{missing}/rotate-secret", json={}, headers=key("nothing"))
        assert refused.status_code == 404, refused.text
        assert not replayed(refused)
    sub = await subscribe(hub, receiver.url(), ["custom.*"])
    # Refused with the key, then corrected with the same key: it applies.
    bad = await hub.patch(
        f"{SUBSCRIPTIONS}/{sub['id']}", json={"timeoutMs": 999_999}, headers=key("patch-2")
    )
    assert bad.status_code == 422, bad.text
    good = await hub.patch(
        f"{SUBSCRIPTIONS}/{sub['id']}", json={"timeoutMs": 500}, headers=key("patch-2")
    )
    assert good.status_code == 200, good.text
    assert good.json()["timeoutMs"] == 500


async def test_a_replayed_secret_opens_only_with_a_key_the_service_still_has(
    database_url: str, receiver: Receiver
) -> None:
    body = {"url": receiver.url(), "events": ["custom.*"]}
    async with in_process(webhook_settings(database_url, secret_key=SERVICE_KEY)) as hub:
        created = await hub.post(SUBSCRIPTIONS, json=body, headers=key("before-the-change"))
        assert created.status_code == 201, created.text
    changed = webhook_settings(
        database_url, secret_key=NEW_SERVICE_KEY, previous_secret_key=SERVICE_KEY
    )
    async with in_process(changed) as hub:
        again = await hub.post(SUBSCRIPTIONS, json=body, headers=key("before-the-change"))
        assert again.status_code == 201, again.text
        assert replayed(again)
        assert again.json() == created.json()
    async with in_process(webhook_settings(database_url, secret_key=NEW_SERVICE_KEY)) as hub:
        gone = await hub.post(SUBSCRIPTIONS, json=body, headers=key("before-the-change"))
        assert gone.status_code == 409, gone.text
        assert gone.json()["code"] == "idempotent_answer_unavailable"
        assert len((await hub.get(SUBSCRIPTIONS)).json()) == 1
