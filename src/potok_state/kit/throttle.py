"""Rate limiting per API key: `THROTTLE_LIMIT` requests per `THROTTLE_TTL` seconds.

A fixed window that opens at a key's first request, as in the original service.
With `REDIS_GLOBAL_ENABLED` the count lives in the global Redis, so every replica
shares one budget per key: one script does INCR, sets the expiry on the first hit
and reads the time left, atomically. Otherwise each process counts on its own.

When the global Redis is unreachable the process counts locally and skips Redis
for `GLOBAL_RETRY_SECONDS` before trying again: an outage loosens the limit to
THROTTLE_LIMIT per replica, rather than refusing traffic or removing the limit.

Failed authentication is limited per client address too (`THROTTLE_AUTH_FAILURES`
per window): past the limit an address gets 429 for every request until its
window ends, whatever key it sends, so guessing keys is slow and a correct guess
is not told apart from a wrong one.

Local windows are kept per key name and per failing address; expired windows
are swept when the table grows, so it stays bounded however many addresses
fail.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from potok_state.cache.connection import redis_client
from potok_state.kit.errors import TooManyRequests
from potok_state.settings import RedisGlobalSettings, ThrottleSettings

log = structlog.get_logger(__name__)

KEY_PREFIX = "potok-state:throttle:"
FAILURE_PREFIX = "auth-failures:"
MAX_LOCAL_WINDOWS = 10_000
GLOBAL_TIMEOUT_SECONDS = 0.2
GLOBAL_RETRY_SECONDS = 1.0

# KEYS[1] counter; ARGV[1] window, ms. Returns {count, ms left in the window}.
_HIT = """
local count = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""


@dataclass(frozen=True, slots=True)
class Hit:
    """One request counted against a key's window."""

    count: int
    seconds_left: float


class RateLimited(TooManyRequests):
    pass


class LocalWindows:
    """Fixed windows counted in this process."""

    def __init__(self, window_seconds: int) -> None:
        self.window_seconds = window_seconds
        self._windows: dict[str, tuple[int, float]] = {}

    def hit(self, name: str) -> Hit:
        now = time.monotonic()
        count, ends = self._windows.get(name, (0, 0.0))
        if now >= ends:
            count, ends = 0, now + self.window_seconds
        count += 1
        self._windows[name] = (count, ends)
        if len(self._windows) > MAX_LOCAL_WINDOWS:
            self._windows = {k: w for k, w in self._windows.items() if w[1] > now}
        return Hit(count, ends - now)

    def peek(self, name: str) -> Hit:
        now = time.monotonic()
        count, ends = self._windows.get(name, (0, 0.0))
        return Hit(0, 0.0) if now >= ends else Hit(count, ends - now)


class Throttle:
    def __init__(self, settings: ThrottleSettings, redis: Redis | None = None) -> None:
        self.limit = settings.limit
        self.auth_failures = settings.auth_failures
        self.window_seconds = settings.ttl
        self.local = LocalWindows(settings.ttl)
        self.redis = redis
        self._script = redis.register_script(_HIT) if redis is not None else None
        self._global_down_until = 0.0

    @classmethod
    def from_settings(cls, settings: ThrottleSettings, redis: RedisGlobalSettings) -> Throttle:
        if not redis.enabled or (settings.limit == 0 and settings.auth_failures == 0):
            return cls(settings)
        client = redis_client(
            redis, socket_timeout=GLOBAL_TIMEOUT_SECONDS, connect_timeout=GLOBAL_TIMEOUT_SECONDS
        )
        return cls(settings, client)

    async def admit(self, name: str) -> None:
        """Count one request of the key `name`; RateLimited when over the limit."""
        if self.limit == 0:
            return
        hit = await self._hit(name)
        if hit.count <= self.limit:
            return
        raise self._refusal(
            f"Rate limit of {self.limit} requests per {self.window_seconds} s exceeded",
            self.limit,
            hit,
        )

    async def refuse_if_failing(self, address: str) -> None:
        """RateLimited when `address` failed to authenticate too often lately."""
        if not self.auth_failures:
            return
        hit = await self._peek(FAILURE_PREFIX + address)
        if hit.count < self.auth_failures:
            return
        raise self._refusal(
            "Too many failed authentications from this address", self.auth_failures, hit
        )

    def _refusal(self, reason: str, limit: int, hit: Hit) -> RateLimited:
        retry_after = max(1, math.ceil(hit.seconds_left))
        return RateLimited(
            f"{reason}; retry after {retry_after} s.",
            details={
                "limit": limit,
                "windowSeconds": self.window_seconds,
                "retryAfterSeconds": retry_after,
            },
            headers={"Retry-After": str(retry_after)},
        )

    async def count_failure(self, address: str) -> None:
        if self.auth_failures:
            name = FAILURE_PREFIX + address
            if self._script is not None:
                self.local.hit(name)  # so that _peek knows when to ask Redis
            await self._hit(name)

    async def _peek(self, name: str) -> Hit:
        local = self.local.peek(name)
        # An address this process never saw fail costs no Redis round trip.
        if self._script is None or self.redis is None or local.count == 0:
            return local
        if time.monotonic() < self._global_down_until:
            return local
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(KEY_PREFIX + name)
                pipe.pttl(KEY_PREFIX + name)
                count, left_ms = await pipe.execute()
        except (RedisError, OSError):
            return self.local.peek(name)
        if count is None or left_ms is None or int(left_ms) < 0:
            return Hit(0, 0.0)
        return Hit(int(count), int(left_ms) / 1000)

    async def _hit(self, name: str) -> Hit:
        if self._script is None or time.monotonic() < self._global_down_until:
            return self.local.hit(name)
        try:
            count, left_ms = await self._script(
                keys=[KEY_PREFIX + name], args=[self.window_seconds * 1000]
            )
        except (RedisError, OSError) as exc:
            if self._global_down_until == 0.0:
                log.warning("throttle.global_unavailable", error=type(exc).__name__)
            self._global_down_until = time.monotonic() + GLOBAL_RETRY_SECONDS
            return self.local.hit(name)
        if self._global_down_until:
            log.info("throttle.global_available")
            self._global_down_until = 0.0
        return Hit(int(count), int(left_ms) / 1000)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
