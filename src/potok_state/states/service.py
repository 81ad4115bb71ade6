"""The States service: writes, batches, lease lapses, and reads through the
caches (docs/data-model.md).

Every change is a pure decision over the current states (the rules are in
states/transitions.py), applied by the store in one transaction (see
`storage.port`); after commit the fresh bodies go to the caches. Queries are
checked in states/queries.py, cursors made in states/cursors.py. Nothing here
knows about HTTP.

One module (some 650 lines) on purpose: writes, batches and lease lapses all go
through `_apply` and `_written` (the one path from a decision to the caches),
and the reads are the other half of that cache protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson

from potok_state.cache import StateWrite, TieredCache
from potok_state.cache.floors import RevisionFloors, state_key
from potok_state.cache.near import NearCache, NearEntry
from potok_state.changes.model import (
    AppliedChange,
    Decide,
    EventType,
    Mutation,
    StateChange,
    StoredState,
)
from potok_state.changes.pipeline import apply_change
from potok_state.idempotency import Applied, IdempotencyKey
from potok_state.kit.errors import ServiceError
from potok_state.metrics import Metrics
from potok_state.states.as_of import AsOf, read_as_of
from potok_state.states.cursors import (
    decode_revision_cursor,
    encode_revision_cursor,
    encode_state_cursor,
)
from potok_state.states.encoding import (
    BATCH_CODEC,
    DELETED_CODEC,
    STATE_CODEC,
    Deleted,
    EncodedBatch,
    EncodedPage,
    EncodedState,
    fragment,
    history_page_json,
    state_page_json,
    stored_state,
)
from potok_state.states.errors import (
    EmptyUpdate,
    InvalidMetadata,
    MachineNotFound,
    MetadataTooLarge,
    StateNotFound,
    UnknownEntityType,
    batch_failure,
    item_error,
)
from potok_state.states.machine_schemas import StateMachineView
from potok_state.states.machines import MachineRegistry
from potok_state.states.merge_patch import merge_patch
from potok_state.states.queries import StateFilter, query_fingerprint, store_query
from potok_state.states.schemas import (
    BatchRequest,
    Metadata,
    RecordStateRequest,
    UpdateStateRequest,
)
from potok_state.states.transitions import (
    LEASE_ACTOR,
    check_version,
    lapse,
    preview,
    transition,
)
from potok_state.storage.port import (
    DueLeases,
    Renewal,
    StateStore,
    StatusCount,
)

# Lapsed leases of one type expired per change set (one transaction).
LEASE_EXPIRY_CHUNK = 250


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
        # Entity types whose last batch found most of the states it did not
        # know of already present: their next batch reads those states
        # instead of guessing them absent (a wrong guess is decided and sent
        # to the database twice; a read costs creating batches a round trip).
        self._batches_find_states: set[str] = set()

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
                transition(
                    self.machines.get(entity),
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
            check_version(existing, expected_version)
            metadata = request.metadata
            if metadata is not None and merge:
                metadata = merge_patch(existing.metadata, metadata)
                self._check_metadata_size(metadata)
            return [
                transition(
                    self.machines.get(entity),
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
            check_version(existing, expected_version)
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
        entity_ids = [item.entityId for item in batch.items]
        hint = self._hint(
            entity, entity_ids, absent_if_unknown=entity not in self._batches_find_states
        )
        unknown = [entity_id for entity_id in entity_ids if hint.get(entity_id) is None]
        found = 0

        def decide(current: Mapping[str, StoredState]) -> list[Mutation]:
            nonlocal found
            found = sum(1 for entity_id in unknown if entity_id in current)
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
                        check_version(existing, item.expectedVersion)
                    change = transition(
                        self.machines.get(entity),
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
                working[item.entityId] = preview(change, existing)
            if failures and batch.atomic:
                raise batch_failure(batch, failures)
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
                            "error": item_error(error).model_dump(),
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
            targets=[(entity, entity_id) for entity_id in entity_ids],
            decide=decide,
            respond=respond,
            codec=BATCH_CODEC,
            actor=actor,
            idempotency=idempotency,
            ttl_seconds=self.idempotency_ttl,
            metrics=self.metrics,
            hint=hint,
        )
        if not applied.replayed:
            # The last decision saw the database's states: learn from them.
            if found * 2 > len(unknown):
                self._batches_find_states.add(entity)
            else:
                self._batches_find_states.discard(entity)
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
                    mutations.append(lapse(state, None, EventType.DELETED))
                elif state.status == target or (
                    machine is not None and not machine.allows(state.status, target)
                ):
                    settled.append((entity_id, state.version))
                else:
                    mutations.append(lapse(state, target, EventType.UPDATED))
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
        state_query = store_query(entity, query)
        lookup = None
        if self.cache is not None:
            lookup = await self.cache.get_list(entity, query_fingerprint(query))
            if lookup is not None and lookup.body is not None:
                return EncodedPage(lookup.body, lookup.revision)
        listed = await self.store.query_states(state_query)
        rows = listed.states
        items = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            next_cursor = encode_state_cursor(items[-1], state_query.sort, query.sort)
        page = EncodedPage(state_page_json(items, next_cursor), listed.revision)
        if self.cache is not None and lookup is not None:
            await self.cache.fill_list(lookup, page.body, page.revision)
        return page

    async def history(
        self, entity: str, entity_id: str, *, limit: int, cursor: str | None
    ) -> bytes:
        after = decode_revision_cursor(cursor) if cursor else 0
        records = await self.store.history(entity, entity_id, after, limit + 1)
        if not records and cursor is None and await self.store.get_state(entity, entity_id) is None:
            # A state that exists answers its history, empty once HISTORY_RETENTION
            # pruned all of it; one that never existed (or was deleted and its
            # history pruned) is not found.
            raise StateNotFound(f"No {entity} with id {entity_id!r} has any history.")
        items = records[:limit]
        next_cursor = encode_revision_cursor(items[-1].revision) if len(records) > limit else None
        return history_page_json(items, next_cursor)

    async def status_counts(self, entity: str | None = None) -> list[StatusCount]:
        """How many states sit in each status now, per type (or of one type)."""
        return await self.store.status_counts(entity)

    async def change_counts(self, since: datetime) -> dict[str, int]:
        """Changes per entity type committed since `since`."""
        return await self.store.change_counts(since)

    def state_machines(self) -> list[StateMachineView]:
        return [StateMachineView.of(machine) for machine in self.machines.all()]

    def state_machine(self, entity: str) -> StateMachineView:
        machine = self.machines.get(entity)
        if machine is None:
            raise MachineNotFound(
                f"Entity type {entity!r} has no transition table; it accepts any status."
            )
        return StateMachineView.of(machine)

    async def state_as_of(self, entity: str, entity_id: str, point: AsOf) -> EncodedState:
        """The state as it was at a revision or a time (states/as_of.py); not
        cached: a past state never changes, but is rarely asked twice."""
        return await read_as_of(self.store, entity, entity_id, point)


def _state_of_single_change(applied: Sequence[AppliedChange]) -> EncodedState:
    state = applied[0].state
    assert state is not None
    return EncodedState.of(state)
