"""Checking that a delivery came from the service (docs/receiver.md).

Two schemes, over the exact body bytes:
* Standard Webhooks (the default): `webhook-signature: v1,<base64>` over
  `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of a
  `whsec_` secret (otherwise the secret's UTF-8 bytes). The timestamp is signed, so
  a delivery older than the tolerance is refused: a captured request cannot be
  replayed later.
* `sha256`: `X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, the
  original service's. Nothing of the time is signed, so it gives no replay
  protection beyond de-duplication; use it only for receivers that cannot read the
  Standard Webhooks headers.

Several secrets may be given (a rotation: the old and the new); a delivery signed
with any of them is accepted, as is a header carrying several signatures.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum

# The signing code the service itself runs: standard library only, so the
# receiver kit stays free of the server's dependencies.
from potok_state.webhooks.signing import sha256_signature, standard_signature

DEFAULT_TOLERANCE_SECONDS = 300


class Scheme(StrEnum):
    STANDARD = "standard"
    SHA256 = "sha256"


class InvalidDelivery(Exception):
    """The request is not a delivery signed with one of the secrets."""


class MissingSignature(InvalidDelivery):
    """The headers the scheme needs are absent or malformed."""


class SignatureMismatch(InvalidDelivery):
    """No signature matches the body with any of the secrets (a tampered body, or
    the wrong secret)."""


class StaleTimestamp(InvalidDelivery):
    """`webhook-timestamp` is further from now than the tolerance (a replayed or
    badly delayed request)."""


def _secrets(secret: str | Sequence[str]) -> list[str]:
    listed = [secret] if isinstance(secret, str) else list(secret)
    if not listed or not all(listed):
        raise ValueError("give at least one non-empty secret")
    return listed


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str | Sequence[str],
    *,
    scheme: Scheme | str = Scheme.STANDARD,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Return when `body` was signed with one of `secret` under `scheme`; raise
    `MissingSignature`, `SignatureMismatch` or `StaleTimestamp` otherwise. Header
    names match case-insensitively; `body` must be the raw bytes received."""
    secrets = _secrets(secret)
    lowered = {name.lower(): value for name, value in headers.items()}
    if Scheme(scheme) is Scheme.SHA256:
        _verify_sha256(lowered, body, secrets)
    else:
        _verify_standard(lowered, body, secrets, tolerance_seconds, now)


def _verify_standard(
    headers: Mapping[str, str],
    body: bytes,
    secrets: list[str],
    tolerance_seconds: float,
    now: float | None,
) -> None:
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise MissingSignature("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise MissingSignature(f"webhook-timestamp is not a number: {timestamp!r}") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        raise StaleTimestamp(
            f"webhook-timestamp {sent_at} is {abs(current - sent_at):.0f} s from now "
            f"(tolerance {tolerance_seconds:g} s)"
        )
    offered = [value for value in signatures.split() if value.startswith("v1,")]
    for secret in secrets:
        expected = standard_signature(secret, message_id, sent_at, body)
        # Every candidate is compared (no early exit on the first), in constant time.
        if any([hmac.compare_digest(expected, candidate) for candidate in offered]):
            return
    raise SignatureMismatch("no webhook-signature matches the body")


def _verify_sha256(headers: Mapping[str, str], body: bytes, secrets: list[str]) -> None:
    offered = headers.get("x-webhook-signature", "")
    if not offered.startswith("sha256="):
        raise MissingSignature("X-Webhook-Signature: sha256=<hex> is required")
    candidate = "sha256=" + offered.removeprefix("sha256=").strip().lower()
    for secret in secrets:
        if hmac.compare_digest(sha256_signature(secret, body), candidate):
            return
    raise SignatureMismatch("X-Webhook-Signature does not match the body")
