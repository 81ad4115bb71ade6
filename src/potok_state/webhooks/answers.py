"""How the answers of the webhooks API are kept for `Idempotency-Key` replays
(idempotency.py): as their JSON, and an answer that shows a secret with that
secret encrypted (docs/webhooks.md, "Idempotency-Key")."""

from __future__ import annotations

from typing import TypeVar

from potok_state.idempotency import ModelCodec, OutcomeCodec
from potok_state.kit.errors import Conflict
from potok_state.webhooks.schemas import (
    Delivery,
    ReplayResult,
    SecretRotated,
    Subscription,
    SubscriptionCreated,
    TestResult,
)
from potok_state.webhooks.sealing import SecretKeyMismatch, SecretSeal

ShowsSecret = TypeVar("ShowsSecret", SubscriptionCreated, SecretRotated)


class AnswerUnavailable(Conflict):
    code = "idempotent_answer_unavailable"


class SecretSealingCodec(OutcomeCodec[ShowsSecret]):
    """Keeps an answer that shows a secret (a new subscription, a rotation)
    for its Idempotency-Key with the secret encrypted like the subscription's
    own (docs/webhooks.md, "Secrets at rest"): a retry gets the secret the
    first answer showed, a database dump does not. Opened with the keys the
    process has: after WEBHOOK_SECRET_KEY changed and the previous key is gone,
    such an answer can no longer be replayed (409)."""

    def __init__(self, model: type[ShowsSecret], seal: SecretSeal) -> None:
        self.model: type[ShowsSecret] = model
        self.seal = seal

    def encode(self, outcome: ShowsSecret) -> bytes:
        sealed = self.seal.seal(outcome.secret, outcome.id)
        return outcome.model_copy(update={"secret": sealed}).model_dump_json().encode()

    def decode(self, data: bytes) -> ShowsSecret:
        stored = self.model.model_validate_json(data)
        try:
            secret = self.seal.open(stored.secret, stored.id)
        except SecretKeyMismatch:
            raise AnswerUnavailable(
                "The first answer to this Idempotency-Key showed a secret encrypted with a "
                "WEBHOOK_SECRET_KEY this service no longer has; rotate the secret for a new one.",
                details={"subscriptionId": stored.id},
            ) from None
        return stored.model_copy(update={"secret": secret})


class _NoBody:
    """The answer of a route that answers with its status only (204)."""

    def encode(self, outcome: None) -> bytes:
        return b""

    def decode(self, data: bytes) -> None:
        return None


SUBSCRIPTION_CODEC = ModelCodec(Subscription)
DELIVERY_CODEC = ModelCodec(Delivery)
REPLAY_CODEC = ModelCodec(ReplayResult)
TEST_CODEC = ModelCodec(TestResult)
NO_BODY = _NoBody()
