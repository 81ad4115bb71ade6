"""What each console page shows, read through the services the API uses (no
second data path): the same queries, the same JSON. Each function answers the
page's data as a JSON-ready dict; `api.py` renders it with a template, or sends
it as it is for `?format=json` (docs/console.md, "Pages as JSON")."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import orjson

from potok_state.clock import format_timestamp, utc_now
from potok_state.events.service import ChangeFeed, RevisionPruned
from potok_state.kit.auth import Caller
from potok_state.kit.scopes import Scope
from potok_state.states.as_of import RevisionUnknown, parse_as_of
from potok_state.states.definitions import DefinitionRecord
from potok_state.states.errors import StateDeleted, StateNotFound
from potok_state.states.machine_schemas import StateMachineView
from potok_state.states.machine_service import MachineService
from potok_state.states.queries import StateFilter
from potok_state.states.service import StateService
from potok_state.storage.port import StatusCount
from potok_state.webhooks.service import WebhookService

JsonObject = dict[str, object]

FEED_LENGTH = 20
HISTORY_PAGE = 100
DEFINITIONS_SHOWN = 50
SERVICE_TYPE = "service"
RATE_WINDOW = timedelta(minutes=1)


class ConsolePages:
    def __init__(
        self,
        states: StateService,
        machines: MachineService,
        webhooks: WebhookService,
        feed: ChangeFeed,
    ) -> None:
        self.states = states
        self.machines = machines
        self.webhooks = webhooks
        self.feed = feed

    # -- overview ----------------------------------------------------------------------

    async def overview(self, caller: Caller) -> JsonObject:
        """Every type the key may read: its count per status (in its table's
        order) and its changes in the last minute; the latest changes."""
        readable = caller.readable()
        machines = {m.entity: m for m in self.states.state_machines()}
        counts = _by_type(await self.states.status_counts())
        rates = await self.states.change_counts(utc_now() - RATE_WINDOW)
        names = sorted(set(machines) | set(counts))
        types = [
            {
                "entity": entity,
                "hasMachine": entity in machines,
                "statuses": _status_rows(machines.get(entity), counts.get(entity, {})),
                "total": sum(counts.get(entity, {}).values()),
                "changesPerMinute": rates.get(entity, 0),
            }
            for entity in names
            if readable is None or entity in readable
        ]
        feed = await self.latest_changes(caller)
        return {"types": types, **feed}

    async def latest_changes(self, caller: Caller) -> JsonObject:
        """The last FEED_LENGTH changes the key may read, newest first, and the
        revision they were read at (the live feed resumes after it)."""
        bounds = await self.states.store.revision_bounds()
        head = bounds.head
        readable = caller.readable()
        # A key that reads some types looks further back for as many changes.
        window = FEED_LENGTH if readable is None else FEED_LENGTH * 10
        after = max(0, head - window, (bounds.oldest or 1) - 1)
        page = orjson.loads(await self.feed.page(after, window, readable))
        items = list(reversed(page["items"]))[:FEED_LENGTH]
        return {"changes": items, "revision": max(head, int(page["nextAfter"]))}

    # -- one type ----------------------------------------------------------------------

    async def entity_type(self, entity: str, query: StateFilter) -> JsonObject:
        machine = self._machine(entity)
        counts = _by_type(await self.states.status_counts(entity)).get(entity, {})
        page = await self.states.query_states(entity, query)
        listed = orjson.loads(page.body)
        return {
            "entity": entity,
            "machine": machine.model_dump(mode="json") if machine else None,
            "statuses": _status_rows(machine, counts),
            "total": sum(counts.values()),
            "definitions": await self.definition_changes(entity),
            "states": listed["items"],
            "nextCursor": listed["nextCursor"],
            "revision": page.revision,
            "filter": {
                "status": list(query.statuses),
                "metadata": dict(query.metadata_equals or {}),
                "updatedAfter": _time(query.updated_after),
                "updatedBefore": _time(query.updated_before),
                "sort": query.sort,
                "limit": query.limit,
                "cursor": query.cursor,
            },
        }

    async def definition_changes(self, entity: str) -> JsonObject:
        """The latest DEFINITIONS_SHOWN changes of the type's definition made
        over the API (GET /state-machines/{entity}/history has them all),
        newest first, each with the statuses it added and removed; `more` when
        older ones are not shown."""
        records = await self.machines.latest_changes(entity, DEFINITIONS_SHOWN + 1)
        changes = [_definition_change(record) for record in records[:DEFINITIONS_SHOWN]]
        return {"items": changes, "more": len(records) > DEFINITIONS_SHOWN}

    async def diagram_counts(self, entity: str) -> tuple[StateMachineView | None, dict[str, int]]:
        counts = _by_type(await self.states.status_counts(entity)).get(entity, {})
        return self._machine(entity), counts

    # -- one entity --------------------------------------------------------------------

    async def entity(
        self, entity: str, entity_id: str, cursor: str | None, as_of: str | None = None
    ) -> JsonObject:
        """The current state (None once deleted) and its history as a timeline,
        oldest first, a page at a time; with `as_of` (a revision or an RFC 3339
        time), also the state as it was then. StateNotFound when it never existed."""
        try:
            state = orjson.loads((await self.states.get_state(entity, entity_id)).body)
        except StateNotFound:
            state = None
        history = orjson.loads(
            await self.states.history(entity, entity_id, limit=HISTORY_PAGE, cursor=cursor)
        )
        items = history["items"]
        revisions = [int(item["revision"]) for item in items]
        revision = max([int(state["revision"])] if state else revisions or [0])
        machine = self._machine(entity)
        allowed = None
        if state is not None and machine is not None:
            allowed = machine.transitions.get(state["status"], [])
        return {
            "entity": entity,
            "entityId": entity_id,
            "state": state,
            "asOf": await self._as_of(entity, entity_id, as_of) if as_of else None,
            "history": items,
            "nextCursor": history["nextCursor"],
            "allowedNext": allowed,
            "revision": revision,
        }

    async def _as_of(self, entity: str, entity_id: str, raw: str) -> JsonObject:
        """The state at `raw` as the API answers `?asOf=`, or why there is none
        (the API's error code and message: not yet existing, deleted, pruned).
        A malformed `raw` is the page's error (422)."""
        point = parse_as_of(raw)
        try:
            past = await self.states.state_as_of(entity, entity_id, point)
        except (StateNotFound, StateDeleted, RevisionPruned, RevisionUnknown) as exc:
            return {"at": raw, "state": None, "code": exc.code, "message": exc.message}
        return {"at": raw, "state": orjson.loads(past.body), "code": None, "message": None}

    # -- webhooks ----------------------------------------------------------------------

    async def subscriptions(self) -> JsonObject:
        listed = await self.webhooks.list_subscriptions()
        return {"subscriptions": [s.model_dump(mode="json") for s in listed]}

    async def subscription(self, subscription_id: str, before: int | None) -> JsonObject:
        subscription = await self.webhooks.get_subscription(subscription_id)
        deliveries = await self.webhooks.deliveries(subscription_id, before=before, limit=50)
        return {
            "subscription": subscription.model_dump(mode="json"),
            "deliveries": [d.model_dump(mode="json") for d in deliveries.items],
            "nextCursor": deliveries.nextCursor,
        }

    # -- services ----------------------------------------------------------------------

    async def services(self) -> JsonObject:
        """The `service` states (discovery, docs/leases.md) by status, each
        with its lease; `now` is the server's clock for the countdowns."""
        machine = self._machine(SERVICE_TYPE)
        order = {status: n for n, status in enumerate(machine.statuses if machine else [])}
        found: list[JsonObject] = []
        cursor: str | None = None
        revision = 0
        while True:
            page = await self.states.query_states(
                SERVICE_TYPE, StateFilter(sort="entityId", limit=500, cursor=cursor)
            )
            listed = orjson.loads(page.body)
            found.extend(listed["items"])
            revision = revision or page.revision
            cursor = listed["nextCursor"]
            if cursor is None or len(found) >= 5000:
                break
        found.sort(key=lambda s: (order.get(str(s["status"]), len(order)), str(s["entityId"])))
        statuses = sorted({str(s["status"]) for s in found}, key=lambda s: order.get(s, len(order)))
        groups = [
            {"status": status, "services": [s for s in found if s["status"] == status]}
            for status in statuses
        ]
        return {"groups": groups, "now": format_timestamp(utc_now()), "revision": revision}

    def _machine(self, entity: str) -> StateMachineView | None:
        return next((m for m in self.states.state_machines() if m.entity == entity), None)


def may_administer(caller: Caller) -> bool:
    return caller.grants.allows(Scope.ADMIN, None)


def _by_type(counts: list[StatusCount]) -> dict[str, dict[str, int]]:
    grouped: dict[str, dict[str, int]] = {}
    for row in counts:
        grouped.setdefault(row.entity, {})[row.status] = row.count
    return grouped


def _status_rows(machine: StateMachineView | None, counts: Mapping[str, int]) -> list[JsonObject]:
    """Every status of the table in its order, then any other status that
    holds states, each with its count and whether it is initial or final."""
    statuses = list(machine.statuses) if machine else []
    statuses += sorted(status for status in counts if status not in statuses)
    initial = set(machine.initial) if machine else set()
    final = set(machine.final) if machine else set()
    return [
        {
            "status": status,
            "count": counts.get(status, 0),
            "initial": status in initial,
            "final": status in final,
            "inTable": machine is not None and status in machine.statuses,
        }
        for status in statuses
    ]


def _definition_change(record: DefinitionRecord) -> JsonObject:
    """One definition change as the type page lists it."""
    previous = None if record.previous is None else orjson.loads(record.previous)
    definition = None if record.definition is None else orjson.loads(record.definition)
    before = set(previous["statuses"]) if previous is not None else set()
    after = set(definition["statuses"]) if definition is not None else set()
    change = "defined" if previous is None else "removed" if definition is None else "changed"
    return {
        "revision": record.revision,
        "version": record.version,
        "actor": record.actor,
        "changedAt": format_timestamp(record.changed_at),
        "change": change,
        "added": sorted(after - before) if previous is not None else [],
        "removedStatuses": sorted(before - after) if definition is not None else [],
        "definition": definition,
    }


def _time(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None
