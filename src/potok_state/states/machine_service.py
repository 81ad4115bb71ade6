"""The state machines of every type: shown, defined and removed over the API,
and kept the same in every process (docs/data-model.md, "Definitions over
the API").

A definition is checked by the same `build_machine` as the built-in and file
tables, its `metadataSchema` compiled once per version. The process that
answers the PUT takes the new version before answering; every other process
takes it when it hears of it: on PostgreSQL by the `potok_machines`
NOTIFY the change's transaction sends (heard through the commit feed's LISTEN
connection, within milliseconds), on SQLite by looking every 250 ms (one
indexed read). The same look runs every few seconds on PostgreSQL as a safety
net. Versions only move forward in a process (`MachineRegistry.take`), so a
late reload never undoes a newer answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson
import structlog

from potok_state.background import BackgroundLoop
from potok_state.clock import format_timestamp
from potok_state.idempotency import Applied, IdempotencyKey, ModelCodec, idempotent
from potok_state.metrics import Metrics
from potok_state.states.cursors import decode_revision_cursor, encode_revision_cursor
from potok_state.states.definitions import (
    ChangedDefinition,
    DefinitionChange,
    DefinitionRecord,
    DefinitionRepository,
    StoredDefinition,
)
from potok_state.states.errors import (
    InvalidMachineDefinition,
    MachineNotFound,
    MachineReadOnly,
)
from potok_state.states.machine_schemas import (
    DefinedMachine,
    DefineStateMachine,
    RemovedMachine,
    StateMachineView,
)
from potok_state.states.machines import (
    MachineDefinitionError,
    MachineRegistry,
    MachineSource,
    StateMachine,
    build_machine,
    machine_table,
)
from potok_state.storage.sql import SqlStateStore
from potok_state.wakeup import Wakeup

log = structlog.get_logger("potok_state.machines")

# How often a process looks for definitions changed elsewhere: on SQLite the
# only way to hear of other processes; on PostgreSQL a safety net under NOTIFY.
POLL_SECONDS = {"sqlite": 0.25, "postgresql": 5.0}
RETRY_AFTER_STORE_ERROR = 1.0
_DEFINED = ModelCodec(DefinedMachine)
_REMOVED = ModelCodec(RemovedMachine)


class MachineService:
    def __init__(
        self,
        store: SqlStateStore,
        registry: MachineRegistry,
        metrics: Metrics,
        *,
        schema_max_bytes: int,
        idempotency_ttl: int,
    ) -> None:
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.schema_max_bytes = schema_max_bytes
        self.idempotency_ttl = idempotency_ttl
        self.repository = DefinitionRepository(store)
        self._changed: Wakeup = store.commits.machines_changed
        self._poll_seconds = POLL_SECONDS[store.dialect.name]
        self._generation = -1
        self._loop = BackgroundLoop("machine-definitions", self._follow)

    # -- keeping every process current ---------------------------------------------

    async def start(self) -> None:
        """Take the stored definitions (before the first request is served),
        then follow their changes."""
        await self.reload()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _follow(self) -> None:
        while True:
            await self._changed.wait(self._poll_seconds)
            try:
                await self.reload()
            except Exception as exc:  # the store is down: keep the tables in force
                log.warning("machines.reload_failed", error=type(exc).__name__)
                await asyncio.sleep(RETRY_AFTER_STORE_ERROR)

    async def reload(self) -> int:
        """Take every stored definition newer than this process has; how many.
        A cheap look first: nothing is read when nothing changed."""
        generation = await self.repository.generation()
        if generation == self._generation:
            return 0
        taken = 0
        for stored in await self.repository.load_all():
            if stored.version <= self.registry.known_version(stored.entity):
                continue
            try:
                machine = _machine_of(stored)
            except MachineDefinitionError as exc:
                # Stored by a release with other rules: that type keeps what it had.
                log.error("machines.definition_unusable", entity=stored.entity, error=str(exc))
                continue
            if self._take(stored.entity, stored.version, machine):
                taken += 1
        self._generation = generation
        return taken

    def _take(self, entity: str, version: int, machine: StateMachine | None) -> bool:
        taken = self.registry.take(entity, version, machine)
        if taken:
            fixed = self.registry.fixed(entity)
            if fixed is not None and machine is not None:
                log.warning(
                    "machines.definition_shadowed",
                    entity=entity,
                    source=fixed.source.value,
                    note="the built-in or file table is in force; the stored definition is not",
                )
            self.metrics.label_entities(machine.entity for machine in self.registry.all())
        return taken

    # -- the API -------------------------------------------------------------------

    async def define(
        self,
        entity: str,
        request: DefineStateMachine,
        *,
        actor: str,
        expected_version: int | None = None,
        force: bool = False,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[DefinedMachine]:
        """Store `request` as the type's definition: the stored view, and
        whether the type had none before."""
        self._check_writable(entity)
        if request.entity is not None and request.entity != entity:
            raise InvalidMachineDefinition(
                f"The body defines {request.entity!r}, the path {entity!r}.",
                details={"entity": entity, "bodyEntity": request.entity},
            )
        if request.metadataSchema is not None:
            size = len(orjson.dumps(request.metadataSchema))
            if size > self.schema_max_bytes:
                raise InvalidMachineDefinition(
                    f"metadataSchema is {size} bytes; the limit is {self.schema_max_bytes} "
                    "(METADATA_MAX_BYTES).",
                    details={"size": size, "limit": self.schema_max_bytes},
                )
        try:
            machine = build_machine(entity, request.table(), source=MachineSource.API)
        except MachineDefinitionError as exc:
            raise InvalidMachineDefinition(str(exc), details={"entity": entity}) from None
        change = DefinitionChange(
            entity,
            machine_table(machine),
            actor,
            expected_version=expected_version,
            statuses=None if force else machine.statuses,
        )

        def respond(outcome: ChangedDefinition) -> DefinedMachine:
            stored = outcome.stored
            previous = outcome.previous
            return DefinedMachine(
                machine=StateMachineView.of(replace(machine, version=stored.version)),
                created=outcome.changed and (previous is None or previous.table is None),
                changed=outcome.changed,
            )

        applied = await idempotent(
            self.store,
            idempotency,
            actor=actor,
            ttl_seconds=self.idempotency_ttl,
            codec=_DEFINED,
            perform=lambda write: self.repository.change(change, write),
            respond=respond,
        )
        answer = applied.outcome
        if not applied.replayed and answer.changed:
            version = answer.machine.version
            assert version is not None
            self._changed_here(entity, version, replace(machine, version=version), actor)
        return applied

    async def remove(
        self,
        entity: str,
        *,
        actor: str,
        expected_version: int | None,
        idempotency: IdempotencyKey | None = None,
    ) -> Applied[RemovedMachine]:
        """Remove the type's definition; its states stay as they are."""
        self._check_writable(entity)
        applied = await idempotent(
            self.store,
            idempotency,
            actor=actor,
            ttl_seconds=self.idempotency_ttl,
            codec=_REMOVED,
            perform=lambda write: self.repository.change(
                DefinitionChange(entity, None, actor, expected_version=expected_version), write
            ),
            respond=lambda outcome: RemovedMachine(entity=entity, version=outcome.stored.version),
        )
        if not applied.replayed:
            self._changed_here(entity, applied.outcome.version, None, actor)
        return applied

    def _changed_here(
        self, entity: str, version: int, machine: StateMachine | None, actor: str
    ) -> None:
        """A change this process committed: in force here before the answer,
        and heard of by the watch hub and the dispatcher at once."""
        self.store.commits.local()
        log.info("machine.updated", entityType=entity, version=version, actor=actor)
        self._take(entity, version, machine)

    async def history(self, entity: str, *, limit: int, cursor: str | None) -> bytes:
        after = decode_revision_cursor(cursor) if cursor else 0
        records = await self.repository.history(entity, after, limit + 1)
        if not records and cursor is None and self.registry.get(entity) is None:
            raise MachineNotFound(f"Entity type {entity!r} has never had a definition.")
        items = records[:limit]
        next_cursor = encode_revision_cursor(items[-1].revision) if len(records) > limit else None
        return _history_json(items, next_cursor)

    async def latest_changes(self, entity: str, limit: int) -> list[DefinitionRecord]:
        """The newest changes of the type's definition, newest first (none for
        a type never defined over the API)."""
        return await self.repository.latest(entity, limit)

    def _check_writable(self, entity: str) -> None:
        fixed = self.registry.fixed(entity)
        if fixed is not None:
            where = "built in" if fixed.source is MachineSource.BUILTIN else "STATE_MACHINES_FILE"
            raise MachineReadOnly(
                f"The {entity} table comes from {where} ({fixed.source.value}): it changes with "
                "the deployment, not through the API.",
                details={"entity": entity, "source": fixed.source.value},
            )


def _machine_of(stored: StoredDefinition) -> StateMachine | None:
    if stored.table is None:
        return None
    return build_machine(
        stored.entity, stored.table, source=MachineSource.API, version=stored.version
    )


def _history_json(records: list[DefinitionRecord], next_cursor: str | None) -> bytes:
    def table(text: str | None) -> orjson.Fragment | None:
        return None if text is None else orjson.Fragment(text)

    return orjson.dumps(
        {
            "items": [
                {
                    "revision": record.revision,
                    "version": record.version,
                    "actor": record.actor,
                    "changedAt": format_timestamp(record.changed_at),
                    "previous": table(record.previous),
                    "definition": table(record.definition),
                }
                for record in records
            ],
            "nextCursor": next_cursor,
        }
    )
