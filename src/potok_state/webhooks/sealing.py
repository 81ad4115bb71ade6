"""Subscription secrets at rest (docs/webhooks.md, "Secrets at rest").

A secret is stored as `enc:v1:<key id>:<base64(nonce ‖ AES-256-GCM ciphertext)>`,
the key derived from WEBHOOK_SECRET_KEY with HKDF-SHA256 and the subscription
id bound in as associated data (a sealed secret copied to another row does not
open). The key id (a digest of the derived key) tells which key sealed a
value, so a changed WEBHOOK_SECRET_KEY is noticed at startup instead of at the
first delivery: the values are re-sealed when WEBHOOK_PREVIOUS_SECRET_KEY holds
the old key, and the service refuses to start otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from potok_state.settings import EXAMPLE_SECRETS

SEALED_PREFIX = "enc:v1:"
NONCE_BYTES = 12
_HKDF_SALT = b"potok-state"
_HKDF_INFO = b"webhook subscription secrets v1"


class SecretKeyMismatch(RuntimeError):
    """Stored secrets were sealed with a key this process does not have."""


def _derive(service_secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return hkdf.derive(service_secret.encode())


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"key id:" + key).hexdigest()[:12]


def _example_secret(key_id: str) -> str | None:
    """The example WEBHOOK_SECRET_KEY (the default, the seed's) with this key
    id: an operator who replaced it need not guess what it was."""
    for example in sorted(EXAMPLE_SECRETS):
        if example and _key_id(_derive(example)) == key_id:
            return example
    return None


class SecretSeal:
    def __init__(self, service_secret: str, previous_service_secret: str | None = None) -> None:
        key = _derive(service_secret)
        self.key_id = _key_id(key)
        self._keys = {self.key_id: AESGCM(key)}
        if previous_service_secret:
            previous = _derive(previous_service_secret)
            self._keys.setdefault(_key_id(previous), AESGCM(previous))
        self._opened: dict[tuple[str, str], str] = {}

    def seal(self, secret: str, subscription_id: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.key_id].encrypt(nonce, secret.encode(), subscription_id.encode())
        encoded = base64.b64encode(nonce + sealed).decode()
        return f"{SEALED_PREFIX}{self.key_id}:{encoded}"

    def open(self, stored: str, subscription_id: str) -> str:
        """The secret of a stored value; a value written before sealing existed
        (no prefix) is returned as it is until `needs_sealing` has it re-sealed."""
        if not stored.startswith(SEALED_PREFIX):
            return stored
        cached = self._opened.get((stored, subscription_id))
        if cached is not None:
            return cached
        key_id, _, encoded = stored.removeprefix(SEALED_PREFIX).partition(":")
        aead = self._keys.get(key_id)
        if aead is None:
            example = _example_secret(key_id)
            old = "the old key" if example is None else repr(example)
            raise SecretKeyMismatch(
                f"the webhook secret of subscription {subscription_id} was encrypted with "
                f"another WEBHOOK_SECRET_KEY (key id {key_id}"
                + ("" if example is None else f", that of the example value {example!r}")
                + f"; this one is {self.key_id}): set WEBHOOK_SECRET_KEY back, or set "
                f"WEBHOOK_PREVIOUS_SECRET_KEY to {old} so the secrets are re-encrypted "
                "with the new one"
            )
        raw = base64.b64decode(encoded)
        try:
            secret = aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], subscription_id.encode()
            ).decode()
        except InvalidTag:
            raise SecretKeyMismatch(
                f"the stored webhook secret of subscription {subscription_id} does not "
                "decrypt: it was altered or belongs to another subscription"
            ) from None
        self._opened[(stored, subscription_id)] = secret
        return secret

    def needs_sealing(self, stored: str) -> bool:
        """Not sealed, or sealed with another key than the current one."""
        return not stored.startswith(f"{SEALED_PREFIX}{self.key_id}:")
