"""The near cache: in each process, the encoded JSON of recently read or written
states, served without leaving the process (docs/architecture.md, "Caches").

An entry is served only while its revision is at least its key's floor
(`floors.RevisionFloors`): a write anywhere on this host raises the floor
before it is answered, and writes on other hosts raise it as soon as this
process hears of them (the commit feed, or the global Redis channel). While
the process cannot hear other hosts' writes, the near cache is not used at all
(`trusted`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from potok_state.cache.floors import RevisionFloors, state_key
from potok_state.changes.model import EventRecord


@dataclass(frozen=True, slots=True)
class NearEntry:
    revision: int
    version: int
    body: bytes
    """The state's JSON; empty for a state deleted at `revision`."""
    leased: bool = False
    """Kept to decide writes on, never served: its lease expiry may be old."""


class NearCache:
    def __init__(self, floors: RevisionFloors, *, size: int) -> None:
        self.floors = floors
        self.size = size
        self.trusted = True
        self.epoch = 0
        """Changes whenever the cache is emptied for having missed writes; a
        value read before that must not be kept (`put`)."""
        self._entries: OrderedDict[str, NearEntry] = OrderedDict()

    def distrust(self) -> None:
        """Writes of other hosts may go unheard from now on: serve nothing."""
        self.trusted = False
        self.clear()

    def trust(self) -> None:
        """Every write of other hosts is heard again (and what was missed while
        distrusted has been forgotten)."""
        self.clear()
        self.trusted = True

    def get(self, key: str) -> NearEntry | None:
        if not self.trusted:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.revision < self.floors.get(key):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: NearEntry, epoch: int) -> None:
        """Keep `entry` (read or written during `epoch`) unless it is older than
        what is known of its key."""
        if (
            self.size <= 0
            or not self.trusted
            or epoch != self.epoch
            or entry.revision < self.floors.get(key)
        ):
            return
        current = self._entries.get(key)
        if current is not None and current.revision > entry.revision:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
        self.epoch += 1


class NearCacheFollower:
    """Keeps a near cache honest about other hosts' writes, fed by the commit
    feed (storage/commits.py)."""

    def __init__(self, near: NearCache) -> None:
        self.near = near

    def on_events(self, events: Sequence[EventRecord]) -> None:
        self.near.floors.raise_many(
            (state_key(event.entity, event.entity_id), event.revision)
            for event in events
            if event.entity is not None and event.entity_id is not None
        )

    def on_blind(self) -> None:
        self.near.distrust()

    def on_sighted(self) -> None:
        self.near.trust()
