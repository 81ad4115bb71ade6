"""Webhook signatures (docs/data-model.md).

Two signatures on every delivery, over the exact body bytes:
* `X-Webhook-Signature: sha256=<hex>`: HMAC-SHA256 keyed with the secret's UTF-8
  bytes, as the original service's `createHmac('sha256', secret)`.
* Standard Webhooks: `webhook-signature: v1,<base64>` over
  `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of
  a `whsec_` secret (otherwise the secret's UTF-8 bytes), so receivers can verify
  with the standard libraries.

Receivers verify with the receiver kit (`potok_state.receiver.verify`, docs/receiver.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def standard_key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            # Padding is optional, as in the Standard Webhooks libraries.
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            pass
    return secret.encode()


def sha256_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    secret: str,
    *,
    event_id: str,
    event: str,
    body: bytes,
    attempt: int,
    timestamp: int,
    previous_secret: str | None = None,
) -> dict[str, str]:
    """Every header of a delivery. During a rotation's grace period
    (`previous_secret`), `webhook-signature` carries both secrets' signatures,
    space-separated as Standard Webhooks allows, so a receiver that still holds
    the old secret verifies too; `X-Webhook-Signature` has the new one only."""
    signatures = standard_signature(secret, event_id, timestamp, body)
    if previous_secret is not None:
        signatures += " " + standard_signature(previous_secret, event_id, timestamp, body)
    return {
        "Content-Type": "application/json",
        "X-Webhook-Signature": sha256_signature(secret, body),
        "X-Webhook-Id": event_id,
        "X-Webhook-Event": event,
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Attempt": str(attempt),
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }
