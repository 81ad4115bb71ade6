"""One Redis tier of the cache (docs/architecture.md, "Caches"): its circuit
breaker, its compare-and-set write and how a value is encoded. `tiers.py` puts
two of them together."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

T = TypeVar("T")

# KEYS[1] key; ARGV revision, value, ttl. Never replaces a value of a newer revision.
_CAS_SET = """
local current = redis.call('GET', KEYS[1])
if current then
  local revision = tonumber(string.match(current, '^(%d+):'))
  if revision and revision > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_value(revision: int, as_of_ms: int, body: bytes) -> bytes:
    return b"%d:%d:%b" % (revision, as_of_ms, body)


def decode_value(raw: bytes) -> tuple[int, int, bytes] | None:
    try:
        revision, as_of, body = raw.split(b":", 2)
        return int(revision), int(as_of), body
    except ValueError:
        return None


class TierUnavailable(Exception):
    """The tier's circuit is open, or the command just failed (and opened it)."""


class Tier:
    """One Redis with its circuit breaker."""

    def __init__(self, name: str, client: Redis, *, retry_delay: float) -> None:
        self.name = name
        self.client = client
        self.retry_delay = retry_delay
        self.cas_set = client.register_script(_CAS_SET)
        self._open_until = 0.0
        self._down = False
        # Invalidations that could not be applied here, replayed when the tier is back.
        self.pending_states: dict[str, int] = {}
        self.pending_generations: dict[str, int] = {}

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    async def call(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        if not self.available:
            raise TierUnavailable(self.name)
        try:
            result = await command(self.client)
        except (RedisError, OSError) as exc:
            self._open_until = time.monotonic() + self.retry_delay
            if not self._down:
                self._down = True
                log.warning("cache.tier_down", tier=self.name, error=f"{type(exc).__name__}: {exc}")
                # Idle pooled connections to a restarted server are dead too: drop them
                # so the first commands after the cool-down do not fail one by one.
                with contextlib.suppress(RedisError, OSError):
                    await self.client.connection_pool.disconnect(inuse_connections=False)
            raise TierUnavailable(self.name) from exc
        if self._down:
            self._down = False
            log.info("cache.tier_up", tier=self.name)
        return result

    async def ping(self) -> None:
        """A direct PING, outside the circuit, for /health; once more after a
        connection error (maybe a pooled connection from before a restart)."""
        try:
            await self.client.ping()
        except RedisConnectionError:
            await self.client.ping()
