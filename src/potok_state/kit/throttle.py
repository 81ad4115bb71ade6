"""Rate limiting per API key: `THROTTLE_LIMIT` requests per `THROTTLE_TTL` seconds.

A fixed window that opens at a key's first request, as in the original service.
With `REDIS_GLOBAL_ENABLED` the count lives in the global Redis, so every replica
shares one budget per key: one script does INCR, sets the expiry on the first hit
and reads the time left, atomically. Otherwise each process counts on its own.

When the global Redis is unreachable the process counts locally and skips Redis
for `GLOBAL_RETRY_SECONDS` before trying again: an outage loosens the limit to
THROTTLE_LIMIT per replica, rather than refusing traffic or removing the limit.

Failed authentication is limited per client address (`THROTTLE_AUTH_FAILURES`
per window; an IPv6 address counts with its /64, which one host usually holds
whole): past the limit, further *failures* from that address are answered 429
until its window ends. A valid key is never refused for them: every service
behind one gateway shares its address, and one misconfigured caller must not
lock the others out. The client address is the TCP peer unless the peer is in
FORWARDED_ALLOW_IPS (docs/operations.md, "Behind a proxy").

Local windows live in a table of at most MAX_LOCAL_WINDOWS entries, least
recently used evicted first: O(1) per request however many addresses fail.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
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
    """Fixed windows counted in this process, least recently used evicted first."""

    def __init__(self, window_seconds: int, max_windows: int = MAX_LOCAL_WINDOWS) -> None:
        self.window_seconds = window_seconds
        self.max_windows = max_windows
        self._windows: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def hit(self, name: str) -> Hit:
        now = time.monotonic()
        count, ends = self._windows.pop(name, (0, 0.0))
        if now >= ends:
            count, ends = 0, now + self.window_seconds
        count += 1
        self._windows[name] = (count, ends)
        if len(self._windows) > self.max_windows:
            self._windows.popitem(last=False)
        return Hit(count, ends - now)

    def __len__(self) -> int:
        return len(self._windows)


def failure_subject(address: str) -> str:
    """What failures are counted against: the address, or an IPv6 address's /64."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


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

    async def count_failure(self, address: str) -> None:
        """Count one failed authentication from `address`; RateLimited when the
        address failed too often lately (the caller answers 401 otherwise)."""
        if not self.auth_failures:
            return
        hit = await self._hit(FAILURE_PREFIX + failure_subject(address))
        if hit.count <= self.auth_failures:
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
