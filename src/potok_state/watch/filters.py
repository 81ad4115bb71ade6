"""What a watch stream asked for, and the index that finds, for each new event, the
streams that may want it without asking every stream (docs/watch.md, "One hub per
process")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from potok_state.changes.model import EventRecord
from potok_state.changes.payload import event_body
from potok_state.changes.selection import event_selected


class WatchEvent:
    """One change as the watch streams see it, encoded once as an SSE frame."""

    __slots__ = ("_data", "_statuses", "entity", "entity_id", "event", "frame", "revision")

    def __init__(self, record: EventRecord) -> None:
        self.revision = record.revision
        self.event = record.event
        self.entity = record.entity
        self.entity_id = record.entity_id
        self._data = record.data
        self._statuses: frozenset[str] | None = None
        self.frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (
            record.revision,
            record.event.encode(),
            event_body(record),
        )

    @property
    def statuses(self) -> frozenset[str]:
        """The statuses the entity left and entered (empty for a custom event)."""
        if self._statuses is None:
            if self.entity is None:
                self._statuses = frozenset()
            else:
                data = orjson.loads(self._data)
                self._statuses = frozenset(
                    status
                    for status in (data.get("previousStatus"), data.get("newStatus"))
                    if isinstance(status, str)
                )
        return self._statuses


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """What a stream asked for; an empty field matches everything."""

    entity: str | None = None
    readable: frozenset[str] | None = None
    """The types the stream's key may read (None: all, and custom events)."""
    id_prefix: str | None = None
    statuses: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()

    def matches(self, event: WatchEvent) -> bool:
        if self.entity is not None and event.entity != self.entity:
            return False
        if self.readable is not None and event.entity not in self.readable:
            return False
        if self.id_prefix is not None and not (event.entity_id or "").startswith(self.id_prefix):
            return False
        if self.events and not event_selected(self.events, event.event):
            return False
        return not self.statuses or not self.statuses.isdisjoint(event.statuses)


class FilterIndex:
    """The distinct filters of the live streams, reachable by what an event carries:
    a filter with an id prefix is found through the prefix, one with an entity type
    through the type, the others are asked about every event. A stream filtered to
    its own entity therefore costs nothing when other entities change."""

    def __init__(self) -> None:
        self._by_prefix: dict[str, set[WatchFilter]] = {}
        self._prefix_lengths: Counter[int] = Counter()
        self._by_entity: dict[str, set[WatchFilter]] = {}
        self._everywhere: set[WatchFilter] = set()

    def add(self, watch_filter: WatchFilter) -> None:
        if watch_filter.id_prefix is not None:
            self._by_prefix.setdefault(watch_filter.id_prefix, set()).add(watch_filter)
            self._prefix_lengths[len(watch_filter.id_prefix)] += 1
        elif watch_filter.entity is not None:
            self._by_entity.setdefault(watch_filter.entity, set()).add(watch_filter)
        else:
            self._everywhere.add(watch_filter)

    def remove(self, watch_filter: WatchFilter) -> None:
        if watch_filter.id_prefix is not None:
            _discard(self._by_prefix, watch_filter.id_prefix, watch_filter)
            self._prefix_lengths[len(watch_filter.id_prefix)] -= 1
            if not self._prefix_lengths[len(watch_filter.id_prefix)]:
                del self._prefix_lengths[len(watch_filter.id_prefix)]
        elif watch_filter.entity is not None:
            _discard(self._by_entity, watch_filter.entity, watch_filter)
        else:
            self._everywhere.discard(watch_filter)

    def route(self, events: Sequence[WatchEvent]) -> dict[WatchFilter, list[WatchEvent]]:
        """The events each filter matches, in order; filters that match none are left out."""
        routed: dict[WatchFilter, list[WatchEvent]] = {}
        for event in events:
            for watch_filter in self._candidates(event):
                if watch_filter.matches(event):
                    routed.setdefault(watch_filter, []).append(event)
        return routed

    def _candidates(self, event: WatchEvent) -> Iterable[WatchFilter]:
        yield from self._everywhere
        if event.entity is None:
            return  # a custom event: no entity type, no id
        by_entity = self._by_entity.get(event.entity)
        if by_entity:
            yield from by_entity
        entity_id = event.entity_id or ""
        for length in self._prefix_lengths:
            if length <= len(entity_id):
                by_prefix = self._by_prefix.get(entity_id[:length])
                if by_prefix:
                    yield from by_prefix


def _discard(index: dict[str, set[WatchFilter]], key: str, watch_filter: WatchFilter) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(watch_filter)
        if not found:
            del index[key]
