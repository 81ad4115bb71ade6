"""Signatures: every delivery verifies with a plain HMAC over the raw body and
with the `standardwebhooks` library and with the receiver kit's `verify`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from potok_state.receiver import InvalidDelivery, verify
from potok_state.webhooks.signing import signature_headers
from tests.support.hub import record, subscribe
from tests.support.receivers import Received, Receiver

PLAIN_SECRET = "s3cr3t-for-the-gateway"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def plain_hmac(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verifies(secret: str, headers: Mapping[str, str], body: bytes, **options: Any) -> bool:
    try:
        verify(headers, body, secret, **options)
    except InvalidDelivery:
        return False
    return True


def standard_secret(secret: str) -> str:
    """How a receiver holding a plain secret configures a Standard Webhooks library."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


async def test_a_delivery_verifies_with_plain_hmac_and_standard_webhooks(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    plain = await subscribe(hub, receiver.url("/plain"), secret=PLAIN_SECRET)
    generated = await subscribe(hub, receiver.url("/generated"))
    assert plain["secret"] == PLAIN_SECRET
    await record(hub, "task", "task_123", "created", metadata={"priority": "high"})
    await record(hub, "task", "task_123", "in_progress", reason="picked up")

    assert generated["secret"].startswith("whsec_")
    # A plain secret `s` is `whsec_` + base64(s) to a Standard Webhooks library; a
    # generated whsec_ secret is taken as it is.
    for path, secret, library_secret in (
        ("/plain", PLAIN_SECRET, standard_secret(PLAIN_SECRET)),
        ("/generated", generated["secret"], generated["secret"]),
    ):
        for delivery in await receiver.wait_for(2, path=path):
            assert delivery.headers["x-webhook-signature"] == plain_hmac(secret, delivery.body)
            assert Webhook(library_secret).verify(delivery.body, delivery.headers) is not None
            assert verifies(secret, delivery.headers, delivery.body)
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_secret("another-secret-entirely")).verify(
            receiver.at("/plain")[0].body, receiver.at("/plain")[0].headers
        )


async def test_every_delivery_carries_the_headers_and_the_exact_body(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    await subscribe(hub, receiver.url(), secret=PLAIN_SECRET)
    created = await record(hub, "task", "task_9", "created", metadata={"a": 1})
    await record(hub, "task", "task_9", "in_progress")
    first, second = await receiver.wait_for(2)

    assert first.payload == {
        "id": first.event_id,
        "event": "entity.created",
        "revision": first.payload["revision"],
        "timestamp": first.payload["timestamp"],
        "data": {
            "entity": "task",
            "id": "task_9",
            "version": 1,
            "previousStatus": None,
            "newStatus": "created",
            "metadata": {"a": 1},
            "reason": None,
        },
    }
    assert list(first.payload) == ["id", "event", "revision", "timestamp", "data"]
    assert second.payload["event"] == "entity.updated"
    assert second.payload["revision"] > first.payload["revision"]
    data = second.payload["data"]
    assert (data["version"], data["previousStatus"], data["newStatus"]) == (
        2,
        "created",
        "in_progress",
    )
    assert data["metadata"] == created["metadata"]
    for delivery in (first, second):
        assert_delivery_headers(delivery, PLAIN_SECRET)
        assert delivery.attempt == 1
    assert first.event_id != second.event_id


def assert_delivery_headers(delivery: Received, secret: str) -> None:
    headers = delivery.headers
    body = delivery.payload
    assert headers["content-type"] == "application/json"
    assert headers["x-webhook-id"] == headers["webhook-id"] == body["id"]
    assert body["id"].startswith("evt_")
    assert headers["x-webhook-event"] == body["event"]
    assert headers["x-webhook-timestamp"] == headers["webhook-timestamp"]
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert int(headers["x-webhook-attempt"]) >= 1
    assert headers["x-webhook-signature"] == plain_hmac(secret, delivery.body)
    assert headers["webhook-signature"].startswith("v1,")
    assert TIMESTAMP.match(body["timestamp"])


# -- the receiver kit's verify on signatures made here ----------------------------------

BODY = b'{"id":"evt_1","event":"custom.ping","revision":1,"timestamp":"x","data":{}}'


def signed(secret: str, *, at: int) -> dict[str, str]:
    return signature_headers(
        secret, event_id="evt_1", event="custom.ping", body=BODY, attempt=1, timestamp=at
    )


@pytest.mark.parametrize("secret", [PLAIN_SECRET, standard_secret(PLAIN_SECRET)])
def test_verify_accepts_a_good_signature(secret: str) -> None:
    now = int(time.time())
    assert verifies(secret, signed(secret, at=now), BODY)
    upper = {name.upper(): value for name, value in signed(secret, at=now).items()}
    assert verifies(secret, upper, BODY)


def test_a_whsec_secret_and_its_plain_form_sign_alike() -> None:
    now = int(time.time())
    plain = signed(PLAIN_SECRET, at=now)
    encoded = signed(standard_secret(PLAIN_SECRET), at=now)
    assert plain["webhook-signature"] == encoded["webhook-signature"]


def test_verify_rejects_a_tampered_body() -> None:
    now = int(time.time())
    headers = signed(PLAIN_SECRET, at=now)
    assert not verifies(PLAIN_SECRET, headers, BODY.replace(b"ping", b"pong"))
    assert not verifies(PLAIN_SECRET, headers, BODY + b" ")


def test_verify_rejects_a_wrong_secret() -> None:
    now = int(time.time())
    assert not verifies("not-the-secret-at-all", signed(PLAIN_SECRET, at=now), BODY)


def test_verify_rejects_a_stale_or_future_timestamp() -> None:
    now = int(time.time())
    assert not verifies(PLAIN_SECRET, signed(PLAIN_SECRET, at=now - 301), BODY)
    assert not verifies(PLAIN_SECRET, signed(PLAIN_SECRET, at=now + 301), BODY)
    assert verifies(PLAIN_SECRET, signed(PLAIN_SECRET, at=now - 299), BODY)
    assert verifies(PLAIN_SECRET, signed(PLAIN_SECRET, at=now - 3600), BODY, tolerance_seconds=7200)


def test_verify_checks_the_sha256_header_when_asked() -> None:
    headers = signed(PLAIN_SECRET, at=int(time.time()))
    legacy = {"X-Webhook-Signature": headers["X-Webhook-Signature"]}
    assert verifies(PLAIN_SECRET, legacy, BODY, scheme="sha256")
    assert not verifies(PLAIN_SECRET, legacy, BODY + b"x", scheme="sha256")
    assert not verifies(PLAIN_SECRET, {}, BODY, scheme="sha256")
    assert not verifies(PLAIN_SECRET, legacy, BODY)  # the Standard Webhooks headers are absent


def test_a_whsec_secret_verifies_with_the_library_even_without_padding() -> None:
    secret = "whsec_" + base64.b64encode(b"thirty-two bytes of key material").decode().rstrip("=")
    headers = signed(secret, at=int(time.time()))
    assert Webhook(secret).verify(BODY, headers) is not None
    assert verifies(secret, headers, BODY)
