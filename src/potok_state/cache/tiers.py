"""Two-tier Redis cache of states and query results (docs/architecture.md, "Caches").

Tiers and the circuit
    A read tries the local Redis, then the global Redis (a hit there is copied into
    local), then the store, and fills both tiers with what the store returned. Either
    tier is optional. Every command has a short timeout (`CACHE_TIMEOUT`); any failure
    opens that tier's circuit: the tier is skipped for `CACHE_RETRY_DELAY`, then the
    next command tries it again, so a dead tier costs nothing and a tier that comes
    back is used again without a restart. No cache error ever reaches the caller.

Keys and values
    state:{entity}:{id}               b"<revision>:<asOfMs>:" + StateView JSON
                                      (an empty JSON part is a tombstone: deleted)
    state:list:{entity}:{gen}:{hash}  b"0:<asOfMs>:" + StatePage JSON
    state:listgen:{entity}            the type's list generation, INCR on every write
    `asOfMs` is the wall time at which the reader started the lookup that produced
    the value; it lets a replica ignore local values that predate a gap in what it heard.

Invalidation (after a change commits, before the writer is answered)
    1. In process, without awaiting (a cancelled request cannot skip it): the key's
       *floor* becomes the new revision. A replica never serves a cached state older
       than the newest revision it wrote or was told about for that key (the floors
       table, `floors.py`, shared by every process of the host and the near cache).
    2. Write-through: the fresh state (or a tombstone) goes into each tier with a
       compare-and-set on revision (the `_CAS_SET` script never replaces a newer
       value); each written type's list generation is INCRed; one message on the
       global channel tells the other replicas (they raise their floors, drop their
       local copies and adopt the generation). No KEYS/SCAN anywhere.

The stale-fill race
    A reader misses, reads revision 5 from the store; a writer commits revision 6
    and writes it through; the reader then fills revision 5. The CAS script drops
    that fill. If the write-through could not reach a tier, the stale value may land
    there, but the floor turns it into a miss on this replica. Lists: the reader fixes
    the generation *before* querying the store and the writer bumps it *after* commit,
    so a page filled from an old read sits under a generation nobody reads again. A
    type whose bump failed is read from the store until the bump is replayed.

Replicas
    While the listener is not subscribed to the global channel this replica could
    miss invalidations, so it does not use its local tier (or its copy of the
    generations); once subscribed again it ignores local values whose asOf predates
    the subscription. Invalidations that could not reach the global tier are kept
    (bounded) and replayed, and re-published, when it is back.

One Redis with its circuit, its compare-and-set and the value encoding is
`tier.py`; the rest is one module on purpose: reads, fills, write-through and
the replica listener each keep half of the invariants above (floors,
generations, the subscription's asOf); split apart, no half could be checked
without the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from potok_state.cache.connection import redis_client
from potok_state.cache.floors import RevisionFloors, state_key
from potok_state.cache.tier import (
    Tier,
    TierUnavailable,
    decode_value,
    encode_value,
    now_ms,
)
from potok_state.metrics import Metrics
from potok_state.settings import Settings

log = structlog.get_logger(__name__)

CHANNEL = b"potok-state:cache-invalidations"
LOCAL = "local"
GLOBAL = "global"
MAX_PENDING = 20_000


def generation_key(entity: str) -> str:
    return f"state:listgen:{entity}"


def list_fingerprint(normalized: object) -> str:
    """A stable short hash of a normalized query (any orjson-serializable value)."""
    return hashlib.sha256(orjson.dumps(normalized, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class StateLookup:
    """The outcome of a cached read of one state. `body` is the StateView JSON on a
    hit (b"" when the state was deleted at `revision`), None on a miss; `as_of_ms`
    goes with a later `fill_state`."""

    key: str
    as_of_ms: int
    revision: int = 0
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class ListLookup:
    """A cached query result: `body` is the StatePage JSON on a hit (read at
    `revision`), None on a miss."""

    key: str
    as_of_ms: int
    body: bytes | None = None
    revision: int = 0


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One committed change of a state: its revision and fresh StateView JSON
    (b"" for a deletion)."""

    entity: str
    entity_id: str
    revision: int
    body: bytes


class TieredCache:
    """Read-through, write-through two-tier cache; see the module docstring."""

    def __init__(
        self,
        *,
        local: Tier | None,
        global_tier: Tier | None,
        listener: Redis | None,
        state_ttl: int,
        list_ttl: int,
        metrics: Metrics,
        floors: RevisionFloors,
    ) -> None:
        self.local = local
        self.global_tier = global_tier
        self.tiers = tuple(tier for tier in (local, global_tier) if tier is not None)
        # List generations live in the tier every replica shares.
        self.generation_tier = global_tier or local
        self._listener = listener
        self.state_ttl = state_ttl
        self.list_ttl = list_ttl
        self._floors = floors
        self._generations: dict[str, int] = {}
        self._trust_epoch = 0
        self._trusted_since_ms = now_ms()
        self._listening = False
        self._replica = uuid.uuid4().hex.encode()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: asyncio.Task[None] | None = None
        self._wake_replay = asyncio.Event()
        self._requests = {
            (tier.name, result): metrics.cache_requests.labels(tier.name, result)
            for tier in self.tiers
            for result in ("hit", "miss", "error", "skipped")
        }

    @classmethod
    def from_settings(
        cls, settings: Settings, metrics: Metrics, floors: RevisionFloors
    ) -> TieredCache | None:
        """The cache the settings ask for; None when no tier is enabled."""
        timeout = settings.cache.timeout / 1000
        retry_delay = settings.cache.retry_delay / 1000
        local = global_tier = None
        listener = None
        if settings.redis_local.enabled:
            client = redis_client(
                settings.redis_local, socket_timeout=timeout, connect_timeout=timeout
            )
            local = Tier(LOCAL, client, retry_delay=retry_delay)
        if settings.redis_global.enabled:
            client = redis_client(
                settings.redis_global, socket_timeout=timeout, connect_timeout=timeout
            )
            global_tier = Tier(GLOBAL, client, retry_delay=retry_delay)
            listener = redis_client(
                settings.redis_global,
                socket_timeout=None,
                connect_timeout=max(timeout, 1.0),
                health_check_interval=1,
            )
        if local is None and global_tier is None:
            return None
        return cls(
            local=local,
            global_tier=global_tier,
            listener=listener,
            state_ttl=settings.cache.state_ttl,
            list_ttl=settings.cache.list_ttl,
            metrics=metrics,
            floors=floors,
        )

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._trusted_since_ms = now_ms()
        self._background = asyncio.create_task(self._run(), name="cache-background")

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for tier in self.tiers:
            await tier.client.aclose()
        if self._listener is not None:
            await self._listener.aclose()

    # -- reads ------------------------------------------------------------------------

    async def get_state(self, entity: str, entity_id: str) -> StateLookup:
        key = state_key(entity, entity_id)
        as_of = now_ms()
        floor = self._floors.get(key)
        for tier in self._readable():
            raw = await self._get(tier, key)
            if raw is None:
                continue
            value = decode_value(raw)
            if value is None or value[0] < floor or not self._fresh_enough(tier, value[1]):
                self._count(tier, "miss")
                continue
            self._count(tier, "hit")
            revision, _, body = value
            if tier is not self.local and self._local_writable(as_of):
                await self._cas_set(self.local, key, revision, encode_value(revision, as_of, body))
            return StateLookup(key, as_of, revision, body)
        return StateLookup(key, as_of)

    async def fill_state(self, lookup: StateLookup, revision: int, body: bytes) -> None:
        """Store what the store returned after a miss; an older revision than this
        replica knows of is not stored, and the tiers keep the newer of two values."""
        if revision < self._floors.get(lookup.key):
            return
        value = encode_value(revision, lookup.as_of_ms, body)
        for tier in self._writable(lookup.as_of_ms):
            await self._cas_set(tier, lookup.key, revision, value)

    async def get_list(self, entity: str, fingerprint: str) -> ListLookup | None:
        """The cached page of a query, or a miss to fill; None: do not cache now."""
        as_of = now_ms()
        generation = await self._generation(entity)
        if generation is None:
            return None
        key = f"state:list:{entity}:{generation}:{fingerprint}"
        for tier in self._readable():
            raw = await self._get(tier, key)
            if raw is None:
                continue
            value = decode_value(raw)
            if value is None or not self._fresh_enough(tier, value[1]):
                self._count(tier, "miss")
                continue
            self._count(tier, "hit")
            if tier is not self.local and self._local_writable(as_of):
                await self._set(
                    self.local, key, encode_value(value[0], as_of, value[2]), self.list_ttl
                )
            return ListLookup(key, as_of, value[2], value[0])
        return ListLookup(key, as_of)

    async def fill_list(self, lookup: ListLookup, body: bytes, revision: int) -> None:
        value = encode_value(revision, lookup.as_of_ms, body)
        for tier in self._writable(lookup.as_of_ms):
            await self._set(tier, lookup.key, value, self.list_ttl)

    # -- writes -----------------------------------------------------------------------

    async def changed(self, writes: Sequence[StateWrite]) -> None:
        """Invalidate after a commit; returns once both tiers were told (or skipped)."""
        if not writes:
            return
        self._floors.raise_many(
            (state_key(write.entity, write.entity_id), write.revision) for write in writes
        )
        # Shielded: a client that goes away must not cut the invalidation short.
        task = asyncio.create_task(self._write_through(writes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _write_through(self, writes: Sequence[StateWrite]) -> None:
        await asyncio.gather(*(self._write_tier(tier, writes) for tier in self.tiers))

    async def _write_tier(self, tier: Tier, writes: Sequence[StateWrite]) -> None:
        as_of = now_ms()
        entities = sorted({write.entity for write in writes})
        bumps = entities if tier is self.generation_tier else []
        publish = tier is self.global_tier

        async def pipeline(client: Redis) -> list[object]:
            async with client.pipeline(transaction=False) as pipe:
                for write in writes:
                    value = encode_value(write.revision, as_of, write.body)
                    await tier.cas_set(
                        keys=[state_key(write.entity, write.entity_id)],
                        args=[write.revision, value, self.state_ttl],
                        client=pipe,
                    )
                for entity in bumps:
                    pipe.incr(generation_key(entity))
                results: list[object] = await pipe.execute()
                return results

        try:
            results = await tier.call(pipeline)
        except TierUnavailable:
            self._remember_pending(tier, writes, bumps)
            return
        generations = {
            entity: int(str(result))
            for entity, result in zip(bumps, results[len(writes) :], strict=True)
        }
        self._adopt_generations(generations)
        if publish:
            states = [(state_key(w.entity, w.entity_id), w.revision) for w in writes]
            await self._publish(tier, states, generations)

    async def _publish(
        self, tier: Tier, states: list[tuple[str, int]], generations: dict[str, int]
    ) -> None:
        message = orjson.dumps({"o": self._replica.decode(), "s": states, "g": generations})
        try:
            await tier.call(lambda client: client.publish(CHANNEL, message))
        except TierUnavailable:
            for key, revision in states:
                self._pending_state(tier, key, revision)

    def _remember_pending(
        self, tier: Tier, writes: Sequence[StateWrite], bumps: Iterable[str]
    ) -> None:
        if tier is self.global_tier:
            for write in writes:
                self._pending_state(tier, state_key(write.entity, write.entity_id), write.revision)
        for entity in bumps:
            tier.pending_generations[entity] = tier.pending_generations.get(entity, 0) + 1
        self._wake_replay.set()

    def _pending_state(self, tier: Tier, key: str, revision: int) -> None:
        if len(tier.pending_states) >= MAX_PENDING and key not in tier.pending_states:
            log.warning("cache.pending_overflow", tier=tier.name, dropped=key)
            return
        tier.pending_states[key] = max(revision, tier.pending_states.get(key, 0))
        self._wake_replay.set()

    async def _replay(self, tier: Tier) -> None:
        """Apply, once the tier answers again, the invalidations it missed."""
        states = dict(tier.pending_states)
        failures = dict(tier.pending_generations)
        entities = sorted(failures)

        async def pipeline(client: Redis) -> list[object]:
            async with client.pipeline(transaction=False) as pipe:
                if states:
                    pipe.delete(*states)
                for entity in entities:
                    pipe.incr(generation_key(entity))
                results: list[object] = await pipe.execute()
                return results

        results = await tier.call(pipeline)
        generations = {
            entity: int(str(result))
            for entity, result in zip(entities, results[1 if states else 0 :], strict=True)
        }
        for key, revision in states.items():
            if tier.pending_states.get(key) == revision:
                del tier.pending_states[key]
        for entity, count in failures.items():
            # A bump that failed after this snapshot still needs its own replay.
            if tier.pending_generations.get(entity) == count:
                del tier.pending_generations[entity]
        self._adopt_generations(generations)
        if tier is self.global_tier:
            await self._publish(tier, list(states.items()), generations)
        log.info("cache.replayed", tier=tier.name, states=len(states), types=len(entities))

    # -- cross-replica ----------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._replay_forever())
            if self._listener is not None:
                group.create_task(self._listen_forever(self._listener))

    async def _replay_forever(self) -> None:
        while True:
            await self._wake_replay.wait()
            self._wake_replay.clear()
            for tier in self.tiers:
                if tier.pending_states or tier.pending_generations:
                    try:
                        await self._replay(tier)
                    except TierUnavailable:
                        self._wake_replay.set()
                    except Exception:  # keep replaying later rather than never
                        log.exception("cache.replay_failed", tier=tier.name)
                        self._wake_replay.set()
            if self._wake_replay.is_set():
                await asyncio.sleep(min(tier.retry_delay for tier in self.tiers))

    async def _listen_forever(self, client: Redis) -> None:
        retry_delay = min(tier.retry_delay for tier in self.tiers)
        while True:
            pubsub = client.pubsub()
            try:
                await self._subscribe(pubsub)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"])
            except (RedisError, OSError) as exc:
                if self._listening:
                    log.warning("cache.listener_down", error=f"{type(exc).__name__}: {exc}")
                self._listening = False
            except Exception:  # a bug must not end cross-replica invalidation for good
                log.exception("cache.listener_failed")
                self._listening = False
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(retry_delay)

    async def _subscribe(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(CHANNEL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message.get("type") == "subscribe":
                break
        else:
            raise TimeoutError("no subscription confirmation from the global Redis")
        # From here on nothing is missed; what this replica cached before may be stale.
        self._trusted_since_ms = now_ms()
        self._trust_epoch += 1
        self._generations.clear()
        self._listening = True
        self._wake_replay.set()
        log.info("cache.listener_subscribed")

    def _apply(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            if message["o"] == self._replica.decode():
                return
            floors = [(str(key), int(revision)) for key, revision in message["s"]]
            self._floors.raise_many(floors)
            keys = [key for key, _ in floors]
            generations = {str(e): int(g) for e, g in message["g"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("cache.bad_invalidation", data=data[:200])
            return
        self._adopt_generations(generations)
        local = self.local
        if keys and local is not None:
            task = asyncio.create_task(self._delete_local(local, keys))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _delete_local(self, tier: Tier, keys: list[str]) -> None:
        # On failure the floors still keep this replica from serving those values.
        with contextlib.suppress(TierUnavailable):
            await tier.call(lambda client: client.delete(*keys))

    # -- internals --------------------------------------------------------------------

    def _local_trusted(self) -> bool:
        return self.global_tier is None or self._listening

    @property
    def hears_other_replicas(self) -> bool:
        """Whether invalidations from other replicas reach this one now."""
        return self._local_trusted()

    def _readable(self) -> Iterable[Tier]:
        if self.local is not None and self._local_trusted():
            yield self.local
        if self.global_tier is not None:
            yield self.global_tier

    def _fresh_enough(self, tier: Tier, as_of_ms: int) -> bool:
        return tier is not self.local or as_of_ms >= self._trusted_since_ms

    def _local_writable(self, as_of_ms: int) -> bool:
        return self._local_trusted() and as_of_ms >= self._trusted_since_ms

    def _writable(self, as_of_ms: int) -> Iterable[Tier]:
        if self.local is not None and self._local_writable(as_of_ms):
            yield self.local
        if self.global_tier is not None:
            yield self.global_tier

    async def _generation(self, entity: str) -> int | None:
        tier = self.generation_tier
        assert tier is not None
        if tier.pending_generations.get(entity):
            return None  # a bump is owed: lists of this type come from the store
        trusted = self._local_trusted()
        if trusted and entity in self._generations:
            return self._generations[entity]
        epoch = self._trust_epoch
        try:
            raw = await tier.call(lambda client: client.get(generation_key(entity)))
        except TierUnavailable:
            return None
        generation = int(raw) if raw is not None else 0
        if trusted and epoch == self._trust_epoch:
            self._generations[entity] = max(self._generations.get(entity, 0), generation)
        return generation

    def _adopt_generations(self, generations: dict[str, int]) -> None:
        if not self._local_trusted():
            return
        for entity, generation in generations.items():
            self._generations[entity] = max(self._generations.get(entity, 0), generation)

    async def _get(self, tier: Tier, key: str) -> bytes | None:
        if not tier.available:
            self._count(tier, "skipped")
            return None
        try:
            raw: bytes | str | None = await tier.call(lambda client: client.get(key))
        except TierUnavailable:
            self._count(tier, "error")
            return None
        if raw is None:
            self._count(tier, "miss")
        return raw.encode() if isinstance(raw, str) else raw

    async def _cas_set(self, tier: Tier | None, key: str, revision: int, value: bytes) -> None:
        if tier is None:
            return
        with contextlib.suppress(TierUnavailable):
            await tier.call(
                lambda client: tier.cas_set(
                    keys=[key], args=[revision, value, self.state_ttl], client=client
                )
            )

    async def _set(self, tier: Tier | None, key: str, value: bytes, ttl: int) -> None:
        if tier is None:
            return
        with contextlib.suppress(TierUnavailable):
            await tier.call(lambda client: client.set(key, value, ex=ttl))

    def _count(self, tier: Tier, result: str) -> None:
        self._requests[(tier.name, result)].inc()
