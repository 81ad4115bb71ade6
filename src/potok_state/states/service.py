"""State rules: validated transitions, versions, batch, queries (docs/data-model.md).

Every change is a pure decision over the current states, applied by the store
in one transaction (see `storage.port`). Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from pydantic import BaseModel

from potok_state.cache import StateWrite, TieredCache, list_fingerprint
from potok_state.cache.floors import RevisionFloors, state_key
from potok_state.cache.near import NearCache, NearEntry
from potok_state.changes.model import (
    AppliedChange,
    Decide,
    EventType,
    JsonObject,
    Mutation,
    StateChange,
    StoredState,
)
from potok_state.changes.pipeline import Applied, IdempotencyKey, ModelCodec, apply_change
from potok_state.clock import as_utc
from potok_state.kit.errors import ServiceError
from potok_state.metrics import Metrics
from potok_state.states.encoding import (
    EncodedState,
    fragment,
    history_page_json,
    state_page_json,
    stored_state,
)
from potok_state.states.errors import (
    BatchInvalid,
    BatchRejected,
    EmptyUpdate,
    InvalidMetadata,
    InvalidQuery,
    InvalidTransition,
    MachineNotFound,
    MetadataTooLarge,
    ReservedId,
    StateNotFound,
    UnknownEntityType,
    UnknownStatus,
    VersionMismatch,
)
from potok_state.states.machines import DELETE, MachineRegistry, StateMachine
from potok_state.states.schemas import (
    BatchRequest,
    ItemError,
    LeasePolicyView,
    Metadata,
    RecordStateRequest,
    StateMachineView,
    UpdateStateRequest,
)
from potok_state.storage.port import (
    DueLeases,
    ListedState,
    Renewal,
    SortField,
    StateQuery,
    StateStore,
)

MAX_METADATA_FILTERS = 20
MAX_STATUS_FILTERS = 64
METADATA_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class Deleted(BaseModel):
    entity: str
    entityId: str
    version: int
    revision: int


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A batch's answer (`BatchResult` JSON) and the states it wrote."""

    body: bytes
    states: tuple[EncodedState, ...] = ()


@dataclass(frozen=True, slots=True)
class EncodedPage:
    """A StatePage as JSON and the revision it was read at."""

    body: bytes
    revision: int


class _StateCodec:
    def encode(self, outcome: EncodedState) -> bytes:
        return outcome.body

    def decode(self, data: bytes) -> EncodedState:
        return EncodedState.from_json(data)


class _BatchCodec:
    def encode(self, outcome: EncodedBatch) -> bytes:
        return outcome.body

    def decode(self, data: bytes) -> EncodedBatch:
        return EncodedBatch(data)


STATE_CODEC = _StateCodec()
BATCH_CODEC = _BatchCodec()
DELETED_CODEC = ModelCodec(Deleted)


LEASE_ACTOR = "system:lease"
LEASE_REASON = "lease expired"
# Lapsed leases of one type expired per change set (one transaction).
LEASE_EXPIRY_CHUNK = 250

RESERVED_IDS = frozenset({"watch"})
"""Ids a state may not have: they name routes under /states/{entity}/."""


@dataclass(frozen=True, slots=True)
class StateFilter:
    statuses: tuple[str, ...] = ()
    metadata_equals: Mapping[str, str] | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    sort: str = "-updatedAt"
    limit: int = 50
    cursor: str | None = None


class StateService:
    def __init__(
        self,
        store: StateStore,
        machines: MachineRegistry,
        *,
        metadata_max_bytes: int,
        idempotency_ttl: int,
        floors: RevisionFloors,
        near: NearCache,
        cache: TieredCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.machines = machines
        self.metadata_max_bytes = metadata_max_bytes
        self.idempotency_ttl = idempotency_ttl
        self.floors = floors
        self.near = near
        self.cache = cache
        self.metrics = metrics

    # -- writes -------------------------------------------------------------------

    async def record_state(
        self,
        entity: str,
        request: RecordStateRequest,
        *,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[EncodedState]:
        """Create the state, or apply a validated transition when it exists."""
        self._check_entity_type(entity)
        if request.metadata is not None:
            self._check_metadata_size(request.metadata)

        def decide(current: Mapping[str, StoredState]) -> list[Mutation]:
            return [
                self._transition(
                    entity,
                    request.entityId,
                    current.get(request.entityId),
                    status=request.status,
                    metadata=request.metadata,
                    reason=request.reason,
                    actor=actor,
                    ttl=request.ttl,
                )
            ]

        hint = self._hint(entity, [request.entityId], absent_if_unknown=True)
        return await self._apply(entity, request.entityId, decide, actor, idempotency, hint)

    async def update_state(
        self,
        entity: str,
        entity_id: str,
        request: UpdateStateRequest,
        *,
        merge: bool,
        actor: str,
        expected_version: int | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[EncodedState]:
        """Change an existing state; metadata replaces (PUT) or merges (PATCH)."""
        if request.status is None and request.metadata is None and request.ttl is None:
            raise EmptyUpdate("Give a new status, new metadata, a lease ttl, or several.")
        if request.metadata is not None and not merge:
            self._check_metadata_size(request.metadata)

        def decide(current: Mapping[str, StoredState]) -> list[Mutation]:
            existing = current.get(entity_id)
            if existing is None:
                raise StateNotFound(f"No {entity} with id {entity_id!r}.")
            _check_version(existing, expected_version)
            metadata = request.metadata
            if metadata is not None and merge:
                metadata = merge_patch(existing.metadata, metadata)
                self._check_metadata_size(metadata)
            return [
                self._transition(
                    entity,
                    entity_id,
                    existing,
                    status=request.status or existing.status,
                    metadata=metadata,
                    reason=request.reason,
                    actor=actor,
                    ttl=request.ttl,
                )
            ]

        hint = self._hint(entity, [entity_id], absent_if_unknown=False)
        return await self._apply(entity, entity_id, decide, actor, idempotency, hint)

    async def delete_state(
        self,
        entity: str,
        entity_id: str,
        *,
        actor: str,
        expected_version: int | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[Deleted]:
        def decide(current: Mapping[str, StoredState]) -> list[Mutation]:
            existing = current.get(entity_id)
            if existing is None:
                raise StateNotFound(f"No {entity} with id {entity_id!r}.")
            _check_version(existing, expected_version)
            return [
                StateChange(
                    entity=entity,
                    entity_id=entity_id,
                    event=EventType.DELETED,
                    status=None,
                    previous_status=existing.status,
                    metadata=existing.metadata,
                    version=existing.version + 1,
                    reason=None,
                    actor=actor,
                )
            ]

        def respond(applied: Sequence[AppliedChange]) -> Deleted:
            change = applied[0]
            assert isinstance(change.mutation, StateChange)
            return Deleted(
                entity=entity,
                entityId=entity_id,
                version=change.mutation.version,
                revision=change.revision,
            )

        applied = await apply_change(
            self.store,
            targets=[(entity, entity_id)],
            decide=decide,
            respond=respond,
            codec=DELETED_CODEC,
            actor=actor,
            idempotency=idempotency,
            ttl_seconds=self.idempotency_ttl,
            metrics=self.metrics,
            hint=self._hint(entity, [entity_id], absent_if_unknown=False),
        )
        if not applied.replayed:
            gone = applied.outcome
            await self._written([EncodedState(entity, entity_id, gone.version, gone.revision, b"")])
        return applied

    async def apply_batch(
        self,
        entity: str,
        batch: BatchRequest,
        *,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[EncodedBatch]:
        """Apply many records in one transaction: all-or-nothing when atomic,
        otherwise every valid item is written and each failure is reported."""
        self._check_entity_type(entity)
        failures: dict[int, ServiceError] = {}
        succeeded: list[int] = []

        def decide(current: Mapping[str, StoredState]) -> list[Mutation]:
            failures.clear()
            succeeded.clear()
            working = dict(current)
            mutations: list[Mutation] = []
            for index, item in enumerate(batch.items):
                try:
                    existing = working.get(item.entityId)
                    if item.metadata is not None:
                        self._check_metadata_size(item.metadata)
                    if item.expectedVersion is not None:
                        if existing is None:
                            raise StateNotFound(f"No {entity} with id {item.entityId!r}.")
                        _check_version(existing, item.expectedVersion)
                    change = self._transition(
                        entity,
                        item.entityId,
                        existing,
                        status=item.status,
                        metadata=item.metadata,
                        reason=item.reason,
                        actor=actor,
                        ttl=item.ttl,
                    )
                except ServiceError as error:
                    failures[index] = error
                    continue
                succeeded.append(index)
                mutations.append(change)
                working[item.entityId] = _preview(change, existing)
            if failures and batch.atomic:
                raise _batch_failure(batch, failures)
            return mutations

        def respond(applied: Sequence[AppliedChange]) -> EncodedBatch:
            states = iter(applied)
            written: list[EncodedState] = []
            results: list[dict[str, object]] = []
            for index, item in enumerate(batch.items):
                error = failures.get(index)
                if error is None:
                    state = next(states).state
                    assert state is not None
                    encoded = EncodedState.of(state)
                    written.append(encoded)
                    results.append(
                        {
                            "index": index,
                            "entityId": item.entityId,
                            "ok": True,
                            "state": fragment(encoded.body),
                            "error": None,
                        }
                    )
                else:
                    results.append(
                        {
                            "index": index,
                            "entityId": item.entityId,
                            "ok": False,
                            "state": None,
                            "error": _item_error(error).model_dump(),
                        }
                    )
            body = orjson.dumps(
                {
                    "atomic": batch.atomic,
                    "succeeded": len(succeeded),
                    "failed": len(failures),
                    "items": results,
                }
            )
            return EncodedBatch(body, tuple(written))

        applied = await apply_change(
            self.store,
            targets=[(entity, item.entityId) for item in batch.items],
            decide=decide,
            respond=respond,
            codec=BATCH_CODEC,
            actor=actor,
            idempotency=idempotency,
            ttl_seconds=self.idempotency_ttl,
            metrics=self.metrics,
            hint=self._hint(
                entity, [item.entityId for item in batch.items], absent_if_unknown=True
            ),
        )
        if not applied.replayed:
            await self._written(applied.outcome.states)
        return applied

    # -- leases (docs/leases.md) ---------------------------------------------------

    async def renew_leases(
        self, entity: str, entity_ids: Sequence[str], ttl: int | None
    ) -> list[Renewal]:
        """Heartbeats: extend leases in place (no revision, history or event)."""
        renewals = await self.store.renew_leases(entity, entity_ids, ttl)
        if self.metrics is not None:
            renewed = sum(1 for renewal in renewals if renewal.expires_at is not None)
            self.metrics.lease_heartbeats.labels("renewed").inc(renewed)
            if renewed < len(renewals):
                self.metrics.lease_heartbeats.labels("refused").inc(len(renewals) - renewed)
        return renewals

    async def expire_leases(self, due: DueLeases) -> int:
        """Apply the lapse of these leases: each one that is still lapsed at
        `due.now` changes its state to its type's `onExpire` (or deletes it) as
        an ordinary change by `system:lease`. Exactly once: a change is written
        only if the state is still at the version it was decided on, so of two
        processes expiring the same lease one writes and the other, deciding
        again, finds no lease. Returns how many states changed."""
        by_type: dict[str, list[str]] = {}
        for entity, entity_id in due.keys:
            by_type.setdefault(entity, []).append(entity_id)
        # Concurrently: the store writes the change sets that wait together in
        # one transaction (group commit).
        counts = await asyncio.gather(
            *(
                self._expire(entity, entity_ids[start : start + LEASE_EXPIRY_CHUNK], due.now)
                for entity, entity_ids in by_type.items()
                for start in range(0, len(entity_ids), LEASE_EXPIRY_CHUNK)
            )
        )
        return sum(counts)

    async def _expire(self, entity: str, entity_ids: list[str], now: datetime) -> int:
        machine = self.machines.get(entity)
        policy = machine.lease if machine is not None else None
        target = policy.on_expire if policy is not None else None
        settled: list[tuple[str, int]] = []

        def decide(current: Mapping[str, StoredState]) -> list[Mutation]:
            settled.clear()
            mutations: list[Mutation] = []
            for entity_id in entity_ids:
                state = current.get(entity_id)
                if state is None or state.lease_expires_at is None or state.lease_expires_at > now:
                    continue  # gone, renewed by a write, or expired by another process
                if target is None:
                    mutations.append(_lapse(state, None, EventType.DELETED))
                elif state.status == target or (
                    machine is not None and not machine.allows(state.status, target)
                ):
                    settled.append((entity_id, state.version))
                else:
                    mutations.append(_lapse(state, target, EventType.UPDATED))
            return mutations

        applied = await apply_change(
            self.store,
            targets=[(entity, entity_id) for entity_id in entity_ids],
            decide=decide,
            respond=list,
            actor=LEASE_ACTOR,
            idempotency=None,
            ttl_seconds=self.idempotency_ttl,
            metrics=self.metrics,
        )
        written = [
            EncodedState.of(change.state)
            if change.state is not None
            else EncodedState(
                entity, change.mutation.entity_id, change.mutation.version, change.revision, b""
            )
            for change in applied.outcome
            if isinstance(change.mutation, StateChange)
        ]
        await self._written(written)
        await self.store.drop_leases(entity, settled, now)
        if self.metrics is not None:
            self.metrics.lease_expiries.labels("changed").inc(len(written))
            self.metrics.lease_expiries.labels("dropped").inc(len(settled))
        return len(written)

    async def _apply(
        self,
        entity: str,
        entity_id: str,
        decide: Decide,
        actor: str,
        idempotency: IdempotencyKey | None,
        hint: Mapping[str, StoredState | None],
    ) -> Applied[EncodedState]:
        applied = await apply_change(
            self.store,
            targets=[(entity, entity_id)],
            decide=decide,
            respond=_state_of_single_change,
            codec=STATE_CODEC,
            actor=actor,
            idempotency=idempotency,
            ttl_seconds=self.idempotency_ttl,
            metrics=self.metrics,
            hint=hint,
        )
        if not applied.replayed:
            await self._written([applied.outcome])
        return applied

    def _hint(
        self, entity: str, entity_ids: Sequence[str], *, absent_if_unknown: bool
    ) -> dict[str, StoredState | None]:
        """What the near cache knows of these states, to decide on without
        reading them (the store checks every version as it writes, so a stale
        hint costs a second decision, never a wrong write). A creating write
        may assume that a state it does not know of is absent."""
        hint: dict[str, StoredState | None] = {}
        for entity_id in entity_ids:
            entry = self.near.get(state_key(entity, entity_id))
            if entry is None:
                if absent_if_unknown:
                    hint[entity_id] = None
            else:
                hint[entity_id] = stored_state(entry.body) if entry.body else None
        return hint

    async def _written(self, states: Sequence[EncodedState]) -> None:
        """After commit, before answering: keep the fresh bodies near and write
        them through the Redis tiers. (Their floors were raised as the change
        committed, `RevisionFloors.committed`, so no process of this host
        serves an older copy any more.) The writer then reads its own write
        everywhere on this host."""
        if not states:
            return
        epoch = self.near.epoch
        for state in states:
            self.near.put(
                state_key(state.entity, state.entity_id),
                NearEntry(state.revision, state.version, state.body, state.leased),
                epoch,
            )
        if self.cache is not None:
            await self.cache.changed(
                [
                    StateWrite(state.entity, state.entity_id, state.revision, state.body)
                    for state in states
                ]
            )

    def _transition(
        self,
        entity: str,
        entity_id: str,
        existing: StoredState | None,
        *,
        status: str,
        metadata: JsonObject | None,
        reason: str | None,
        actor: str,
        ttl: int | None = None,
    ) -> StateChange:
        machine = self.machines.get(entity)
        if ttl is not None:  # 0 drops the lease
            lease_ttl = ttl or None
        elif existing is not None:  # a write renews the lease the state holds
            lease_ttl = existing.lease_ttl
        else:
            lease_ttl = machine.lease.ttl if machine is not None and machine.lease else None
        if machine is not None and status not in machine.statuses:
            raise UnknownStatus(
                f"{status!r} is not a status of {entity}.",
                details={"status": status, "statuses": list(machine.statuses)},
            )
        if existing is None:
            if entity_id in RESERVED_IDS:
                raise ReservedId(
                    f"{entity_id!r} cannot be an entity id: GET /states/{entity}/{entity_id} "
                    "is a route of its own.",
                    details={"entityId": entity_id},
                )
            if machine is not None and not machine.allows_initial(status):
                raise InvalidTransition(
                    f"A new {entity} cannot start as {status!r}.",
                    details={
                        "entity": entity,
                        "entityId": entity_id,
                        "currentStatus": None,
                        "requestedStatus": status,
                        "allowed": list(machine.initial),
                    },
                )
            return StateChange(
                entity=entity,
                entity_id=entity_id,
                event=EventType.CREATED,
                status=status,
                previous_status=None,
                metadata=metadata if metadata is not None else {},
                version=1,
                reason=reason,
                actor=actor,
                lease_ttl=lease_ttl,
            )
        if machine is not None and not machine.allows(existing.status, status):
            raise InvalidTransition(
                f"{entity} {entity_id!r} cannot go from {existing.status!r} to {status!r}.",
                details={
                    "entity": entity,
                    "entityId": entity_id,
                    "currentStatus": existing.status,
                    "requestedStatus": status,
                    "allowed": list(machine.allowed_from(existing.status)),
                },
            )
        return StateChange(
            entity=entity,
            entity_id=entity_id,
            event=EventType.UPDATED,
            status=status,
            previous_status=existing.status,
            metadata=metadata if metadata is not None else existing.metadata,
            version=existing.version + 1,
            reason=reason,
            actor=actor,
            lease_ttl=lease_ttl,
        )

    def _check_entity_type(self, entity: str) -> None:
        if self.machines.strict and self.machines.get(entity) is None:
            raise UnknownEntityType(
                f"Entity type {entity!r} has no transition table (STATE_MACHINES_STRICT is on).",
                details={"entity": entity},
            )

    def _check_metadata_size(self, metadata: Metadata) -> None:
        try:
            # Encoded one level down, as the outbox stores it inside the event's
            # `data`: nesting orjson cannot write (over 254 levels) is refused
            # here rather than failing inside the transaction as a 500.
            size = len(orjson.dumps([metadata])) - 2
        except orjson.JSONEncodeError as exc:
            raise InvalidMetadata(f"metadata cannot be stored: {exc}.") from None
        if size > self.metadata_max_bytes:
            raise MetadataTooLarge(
                f"metadata is {size} bytes; the limit is {self.metadata_max_bytes}.",
                details={"size": size, "limit": self.metadata_max_bytes},
            )

    # -- reads --------------------------------------------------------------------

    async def get_state(self, entity: str, entity_id: str) -> EncodedState:
        key = state_key(entity, entity_id)
        near = self.near.get(key)
        if near is not None and not near.leased:
            if not near.body:  # cached deletion
                raise StateNotFound(f"No {entity} with id {entity_id!r}.")
            return EncodedState(entity, entity_id, near.version, near.revision, near.body)
        epoch = self.near.epoch
        if near is not None:  # leased: its lease is read fresh
            encoded = await self._read_store(entity, entity_id)
        else:
            encoded = await self._read_through(entity, entity_id)
        self.near.put(
            key,
            NearEntry(encoded.revision, encoded.version, encoded.body, encoded.leased),
            epoch,
        )
        if not encoded.body:
            raise StateNotFound(f"No {entity} with id {entity_id!r}.")
        return encoded

    async def _read_through(self, entity: str, entity_id: str) -> EncodedState:
        """The state from the Redis tiers or the store; an empty body when it
        does not exist (at the revision `revision`, 0 when never known)."""
        lookup = None
        if self.cache is not None:
            lookup = await self.cache.get_state(entity, entity_id)
            if lookup.body == b"":
                return EncodedState(entity, entity_id, 0, lookup.revision, b"")
            if lookup.body is not None:
                cached = EncodedState.from_json(lookup.body)
                if not cached.leased:
                    return cached
                return await self._read_store(entity, entity_id)
        encoded = await self._read_store(entity, entity_id)
        if self.cache is not None and lookup is not None and not encoded.leased:
            await self.cache.fill_state(lookup, encoded.revision, encoded.body)
        return encoded

    async def _read_store(self, entity: str, entity_id: str) -> EncodedState:
        state = await self.store.get_state(entity, entity_id)
        if state is None:
            return EncodedState(entity, entity_id, 0, 0, b"")
        return EncodedState.of(state)

    async def query_states(self, entity: str, query: StateFilter) -> EncodedPage:
        descending = query.sort.startswith("-")
        try:
            sort = SortField(query.sort.removeprefix("-"))
        except ValueError:
            raise InvalidQuery(
                f"Cannot sort by {query.sort!r}.",
                details={"sortable": [f"{s.value}" for s in SortField]},
            ) from None
        if len(query.metadata_equals or {}) > MAX_METADATA_FILTERS:
            raise InvalidQuery(
                f"At most {MAX_METADATA_FILTERS} metadata.<key> filters per query.",
                details={"limit": MAX_METADATA_FILTERS},
            )
        if len(query.statuses) > MAX_STATUS_FILTERS:
            raise InvalidQuery(
                f"At most {MAX_STATUS_FILTERS} status filters per query.",
                details={"limit": MAX_STATUS_FILTERS},
            )
        metadata_equals: dict[str, tuple[str, ...]] = {}
        for key, value in (query.metadata_equals or {}).items():
            if not key or len(key) > 64 or not set(key) <= METADATA_KEY_CHARS:
                raise InvalidQuery(
                    f"metadata.{key} is not a filter: keys are 1-64 of [A-Za-z0-9_-].",
                    details={"key": key},
                )
            metadata_equals[key] = _json_text_candidates(value)
        after_key = None
        if query.cursor is not None:
            after_key = _decode_state_cursor(query.cursor, query.sort)
        lookup = None
        if self.cache is not None:
            lookup = await self.cache.get_list(entity, _query_fingerprint(query))
            if lookup is not None and lookup.body is not None:
                return EncodedPage(lookup.body, lookup.revision)
        listed = await self.store.query_states(
            StateQuery(
                entity=entity,
                statuses=query.statuses,
                metadata_equals=metadata_equals,
                updated_after=query.updated_after,
                updated_before=query.updated_before,
                sort=sort,
                descending=descending,
                after_key=after_key,
                limit=query.limit + 1,
            )
        )
        rows = listed.states
        items = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            next_cursor = _encode_state_cursor(items[-1], sort, query.sort)
        page = EncodedPage(state_page_json(items, next_cursor), listed.revision)
        if self.cache is not None and lookup is not None:
            await self.cache.fill_list(lookup, page.body, page.revision)
        return page

    async def history(
        self, entity: str, entity_id: str, *, limit: int, cursor: str | None
    ) -> bytes:
        after = _decode_revision_cursor(cursor) if cursor else 0
        records = await self.store.history(entity, entity_id, after, limit + 1)
        if not records and cursor is None and await self.store.get_state(entity, entity_id) is None:
            # A state that exists answers its history, empty once HISTORY_RETENTION
            # pruned all of it; one that never existed (or was deleted and its
            # history pruned) is not found.
            raise StateNotFound(f"No {entity} with id {entity_id!r} has any history.")
        items = records[:limit]
        next_cursor = _encode_revision_cursor(items[-1].revision) if len(records) > limit else None
        return history_page_json(items, next_cursor)

    def state_machines(self) -> list[StateMachineView]:
        return [_machine_view(machine) for machine in self.machines.all()]

    def state_machine(self, entity: str) -> StateMachineView:
        machine = self.machines.get(entity)
        if machine is None:
            raise MachineNotFound(
                f"Entity type {entity!r} has no transition table; it accepts any status."
            )
        return _machine_view(machine)


def _query_fingerprint(query: StateFilter) -> str:
    """Equal for queries that mean the same (status order and repeats do not matter)."""
    return list_fingerprint(
        [
            sorted(set(query.statuses)),
            sorted((query.metadata_equals or {}).items()),
            query.updated_after.isoformat() if query.updated_after else None,
            query.updated_before.isoformat() if query.updated_before else None,
            query.sort,
            query.limit,
            query.cursor,
        ]
    )


def _state_of_single_change(applied: Sequence[AppliedChange]) -> EncodedState:
    state = applied[0].state
    assert state is not None
    return EncodedState.of(state)


def merge_patch(target: JsonObject, patch: JsonObject) -> JsonObject:
    """RFC 7396 JSON merge patch: objects merge recursively, null removes a key."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            base = merged[key]
            assert isinstance(base, dict)
            merged[key] = merge_patch(base, value)
        else:
            merged[key] = value
    return merged


def _check_version(existing: StoredState, expected: int | None) -> None:
    if expected is not None and existing.version != expected:
        raise VersionMismatch(
            f"{existing.entity} {existing.entity_id!r} is at version {existing.version}, "
            f"not {expected}.",
            details={"currentVersion": existing.version, "expectedVersion": expected},
        )


def _lapse(state: StoredState, status: str | None, event: EventType) -> StateChange:
    return StateChange(
        entity=state.entity,
        entity_id=state.entity_id,
        event=event,
        status=status,
        previous_status=state.status,
        metadata=state.metadata,
        version=state.version + 1,
        reason=LEASE_REASON,
        actor=LEASE_ACTOR,
    )


def _preview(change: StateChange, existing: StoredState | None) -> StoredState:
    """The state a batch item leaves behind, so a later item for the same id is
    validated against it. Only status, metadata and version are read from it;
    the store stamps revisions and times when it writes."""
    assert change.status is not None
    return StoredState(
        entity=change.entity,
        entity_id=change.entity_id,
        status=change.status,
        metadata=change.metadata,
        version=change.version,
        revision=existing.revision if existing else 0,
        created_at=existing.created_at if existing else datetime.min,
        updated_at=existing.updated_at if existing else datetime.min,
        lease_ttl=change.lease_ttl,
    )


def _item_error(error: ServiceError) -> ItemError:
    return ItemError(
        statusCode=error.status_code, code=error.code, message=error.message, details=error.details
    )


def _batch_failure(batch: BatchRequest, failures: Mapping[int, ServiceError]) -> ServiceError:
    listed = [
        {
            "index": index,
            "entityId": batch.items[index].entityId,
            **_item_error(error).model_dump(),
        }
        for index, error in sorted(failures.items())
    ]
    invalid = any(error.status_code == 422 for error in failures.values())
    error_type = BatchInvalid if invalid else BatchRejected
    return error_type(
        f"{len(failures)} of {len(batch.items)} items failed; nothing was written.",
        details={"failures": listed},  # type: ignore[dict-item]
    )


def _json_text_candidates(value: str) -> tuple[str, ...]:
    """A query value matches a metadata string equal to it, or a number, boolean
    or null whose JSON text it is (`?metadata.retries=3` matches 3 and "3")."""
    candidates = [orjson.dumps(value).decode()]
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return tuple(candidates)
    if parsed is None or isinstance(parsed, bool | int | float):
        candidates.append(value)
    return tuple(candidates)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_state_cursor(state: ListedState, sort: SortField, sort_spec: str) -> str:
    value: str | int
    match sort:
        case SortField.ENTITY_ID:
            value = state.entity_id
        case SortField.CREATED_AT:
            value = state.created_at
        case SortField.UPDATED_AT:
            value = state.revision
        case SortField.STATUS:
            value = state.status
        case SortField.VERSION:
            value = state.version
    return _b64(orjson.dumps([sort_spec, value, state.entity_id]))


def _decode_state_cursor(cursor: str, sort_spec: str) -> tuple[str | int | datetime, str]:
    try:
        spec, value, entity_id = orjson.loads(_unb64(cursor))
        if spec != sort_spec:
            raise InvalidQuery(
                "This cursor belongs to a query with another sort order.",
                details={"cursorSort": str(spec), "sort": sort_spec},
            )
        if not isinstance(entity_id, str) or "\x00" in entity_id:
            raise ValueError(cursor)
        # The value is bound against the sort column, so its type and range must
        # fit that column: a mismatch is bad input, not a database error.
        match SortField(sort_spec.removeprefix("-")):
            case SortField.UPDATED_AT | SortField.VERSION as field:
                limit = 2**63 if field is SortField.UPDATED_AT else 2**31
                if type(value) is not int or not 0 <= value < limit:
                    raise ValueError(cursor)
                return value, entity_id
            case SortField.CREATED_AT:
                if not isinstance(value, str):
                    raise ValueError(cursor)
                return as_utc(datetime.fromisoformat(value)), entity_id
            case _:
                if not isinstance(value, str) or "\x00" in value:
                    raise ValueError(cursor)
                return value, entity_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidQuery("The cursor is not valid.", details={"cursor": cursor}) from None


def _encode_revision_cursor(revision: int) -> str:
    return _b64(str(revision).encode())


def _decode_revision_cursor(cursor: str) -> int:
    try:
        revision = int(_unb64(cursor).decode())
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidQuery("The cursor is not valid.", details={"cursor": cursor}) from None
    # Revisions are BIGINT; a larger number would fail in the driver, not here.
    if not 0 <= revision < 2**63:
        raise InvalidQuery("The cursor is not valid.", details={"cursor": cursor})
    return revision


def _machine_view(machine: StateMachine) -> StateMachineView:
    return StateMachineView(
        entity=machine.entity,
        statuses=list(machine.statuses),
        initial=list(machine.initial),
        final=list(machine.final),
        transitions={source: list(targets) for source, targets in machine.transitions.items()},
        lease=None
        if machine.lease is None
        else LeasePolicyView(ttl=machine.lease.ttl, onExpire=machine.lease.on_expire or DELETE),
    )
