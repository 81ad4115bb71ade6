"""Webhook signatures (docs/data-model.md).

Two signatures on every delivery, over the exact body bytes:
* `X-Webhook-Signature: sha256=<hex>`: HMAC-SHA256 keyed with the secret's UTF-8
  bytes, as the original service's `createHmac('sha256', secret)`.
* Standard Webhooks: `webhook-signature: v1,<base64>` over
  `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of
  a `whsec_` secret (otherwise the secret's UTF-8 bytes), so receivers can verify
  with the standard libraries.

`verify_signature` is the receiver-side helper.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


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
    secret: str, *, event_id: str, event: str, body: bytes, attempt: int, timestamp: int
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Webhook-Signature": sha256_signature(secret, body),
        "X-Webhook-Id": event_id,
        "X-Webhook-Event": event,
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Attempt": str(attempt),
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(secret, event_id, timestamp, body),
    }


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when `body` was signed with `secret`. Checks the Standard Webhooks
    signature (and that its timestamp is within the tolerance) when present,
    otherwise the `X-Webhook-Signature: sha256=` one. Header names are matched
    case-insensitively."""
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if message_id and timestamp and signatures:
        try:
            sent_at = int(timestamp)
        except ValueError:
            return False
        current = time.time() if now is None else now
        if abs(current - sent_at) > tolerance_seconds:
            return False
        expected = standard_signature(secret, message_id, sent_at, body)
        return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split())
    legacy = lowered.get("x-webhook-signature")
    if legacy:
        return hmac.compare_digest(sha256_signature(secret, body), legacy)
    return False
