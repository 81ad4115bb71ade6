"""Per-subscription delivery rates (`rateLimit`, deliveries per second;
docs/webhooks.md): a token bucket per subscription in each worker process,
holding at most one second's worth. Tokens are taken when deliveries are
claimed, so a rate-limited subscription never holds a slot while it waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    per_second: int
    tokens: float
    at: float


class DeliveryRates:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _refilled(self, subscription_id: str, per_second: int) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(subscription_id)
        if bucket is None or bucket.per_second != per_second:
            bucket = _Bucket(per_second, float(per_second), now)
            self._buckets[subscription_id] = bucket
        else:
            bucket.tokens = min(per_second, bucket.tokens + (now - bucket.at) * per_second)
            bucket.at = now
        return bucket

    def take(self, subscription_id: str, per_second: int | None) -> bool:
        """One delivery of this subscription may start now (and is counted)."""
        if per_second is None:
            self._buckets.pop(subscription_id, None)
            return True
        bucket = self._refilled(subscription_id, per_second)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def exhausted(self) -> list[str]:
        """Subscriptions that may not start a delivery now (left out of claims)."""
        return [
            subscription_id
            for subscription_id, bucket in self._buckets.items()
            if self._refilled(subscription_id, bucket.per_second).tokens < 1
        ]

    def next_token_in(self) -> float | None:
        """Seconds until the first exhausted subscription may start one again."""
        waits = [
            (1 - bucket.tokens) / bucket.per_second
            for bucket in self._buckets.values()
            if bucket.tokens < 1
        ]
        return min(waits) if waits else None
