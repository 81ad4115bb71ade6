"""The global change feed, read from the outbox by revision."""

from __future__ import annotations

from potok_state.events.payload import event_body
from potok_state.storage.port import StateStore


class ChangeFeed:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def page(self, after: int, limit: int) -> bytes:
        """A `ChangePage` as JSON, built from the stored payload bytes."""
        records = await self.store.changes(after, limit)
        next_after = records[-1].revision if records else after
        items = b",".join(event_body(record) for record in records)
        return b'{"items":[' + items + b'],"nextAfter":' + str(next_after).encode() + b"}"
