"""Secret rotation (docs/webhooks.md): the new secret signs at once; during
WEBHOOK_SECRET_GRACE the old one signs too, so a receiver holding either
verifies with the `standardwebhooks` library."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from potok_state.receiver import verify
from tests.support.hub import in_process, record, subscribe, subscription, webhook_settings
from tests.support.receivers import Receiver

OLD = "the-old-secret-of-the-gateway"
NEW = "the-new-secret-of-the-gateway"
SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"


def library(secret: str) -> Webhook:
    """A Standard Webhooks verifier for a receiver holding `secret`."""
    return Webhook("whsec_" + base64.b64encode(secret.encode()).decode())


async def test_during_the_grace_period_old_and_new_secrets_both_verify(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub = await subscribe(hub, receiver.url(), secret=OLD)
    rotated = await hub.post(f"{SUBSCRIPTIONS}/{sub['id']}/rotate-secret", json={"secret": NEW})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] == NEW
    assert rotated.json()["previousSecretExpiresAt"] is not None
    shown = await subscription(hub, sub["id"])
    assert shown["previousSecretExpiresAt"] == rotated.json()["previousSecretExpiresAt"]
    assert NEW not in str(shown)
    assert OLD not in str(shown)

    await record(hub, "task", "t1", "created")
    [delivery] = await receiver.wait_for(1)
    assert len(delivery.headers["webhook-signature"].split()) == 2
    assert library(OLD).verify(delivery.body, delivery.headers) is not None
    assert library(NEW).verify(delivery.body, delivery.headers) is not None
    with pytest.raises(WebhookVerificationError):
        library("some-other-secret-entirely").verify(delivery.body, delivery.headers)
    # The legacy header carries the new secret only.
    expected = "sha256=" + hmac.new(NEW.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["x-webhook-signature"] == expected
    verify(delivery.headers, delivery.body, OLD)
    verify(delivery.headers, delivery.body, NEW)


@pytest.fixture
async def graceless_hub(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(webhook_settings(database_url, secret_grace=0)) as client:
        yield client


async def test_after_the_grace_period_only_the_new_secret_verifies(
    graceless_hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    hub = graceless_hub
    sub = await subscribe(hub, receiver.url(), secret=OLD)
    rotated = await hub.post(f"{SUBSCRIPTIONS}/{sub['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    generated = rotated.json()["secret"]
    assert generated.startswith("whsec_")
    assert (await subscription(hub, sub["id"]))["previousSecretExpiresAt"] is None

    await record(hub, "task", "t1", "created")
    [delivery] = await receiver.wait_for(1)
    assert len(delivery.headers["webhook-signature"].split()) == 1
    assert Webhook(generated).verify(delivery.body, delivery.headers) is not None
    with pytest.raises(WebhookVerificationError):
        library(OLD).verify(delivery.body, delivery.headers)


async def test_rotating_an_unknown_subscription_is_a_404(hub: httpx.AsyncClient) -> None:
    response = await hub.post(f"{SUBSCRIPTIONS}/sub_{'0' * 24}/rotate-secret", json={})
    assert response.status_code == 404
    assert response.json()["code"] == "subscription_not_found"
    short = await hub.post(f"{SUBSCRIPTIONS}/sub_{'0' * 24}/rotate-secret", json={"secret": "x"})
    assert short.status_code == 422
