"""De-duplication by event id (deliveries are at-least-once: a retry, a replay or a
lost acknowledgement brings the same event again, with the same `webhook-id`).

A store *claims* an id the first time it is seen; a claim whose handling failed is
*released*, so the service's retry is handled rather than dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis


class DedupStore(Protocol):
    def claim(self, event_id: str) -> bool:
        """True the first time `event_id` is claimed (atomically), False after."""
        ...

    def release(self, event_id: str) -> None:
        """Forget a claim whose handling failed."""
        ...


class AsyncDedupStore(Protocol):
    async def claim(self, event_id: str) -> bool: ...

    async def release(self, event_id: str) -> None: ...


class MemoryDedupStore:
    """The last `max_entries` ids, in this process (the default). Deliveries of one
    event are retried within hours, so a bound keeps memory flat; use Redis when
    several processes receive, or when a duplicate after a restart matters."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._seen:
                self._seen.move_to_end(event_id)
                return False
            self._seen[event_id] = None
            if len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return True

    def release(self, event_id: str) -> None:
        with self._lock:
            self._seen.pop(event_id, None)


class RedisDedupStore:
    """Claims shared by every process through Redis (`SET NX EX`), kept `ttl_seconds`
    (default 3 days: longer than any retry schedule)."""

    def __init__(
        self, redis: Redis, *, prefix: str = "potok:webhook:", ttl_seconds: int = 259_200
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def claim(self, event_id: str) -> bool:
        return bool(self.redis.set(self.prefix + event_id, b"1", nx=True, ex=self.ttl_seconds))

    def release(self, event_id: str) -> None:
        self.redis.delete(self.prefix + event_id)


class AsyncRedisDedupStore:
    """`RedisDedupStore` for `redis.asyncio`."""

    def __init__(
        self, redis: AsyncRedis, *, prefix: str = "potok:webhook:", ttl_seconds: int = 259_200
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    async def claim(self, event_id: str) -> bool:
        return bool(
            await self.redis.set(self.prefix + event_id, b"1", nx=True, ex=self.ttl_seconds)
        )

    async def release(self, event_id: str) -> None:
        await self.redis.delete(self.prefix + event_id)
