"""The publisher's row (`stream_publisher`): its position in the outbox and the
lease that lets one process at a time publish (docs/stream.md, "One publisher")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from potok_state.clock import utc_now
from potok_state.storage.cursor_lease import claim_cursor
from potok_state.storage.database import Tx


@dataclass(frozen=True, slots=True)
class Position:
    """Every outbox event up to `revision` is in the stream, the last one at
    `stream_sequence`; `holder` publishes until `held_until`."""

    revision: int
    stream_sequence: int | None
    published_at: datetime | None
    holder: str | None
    held_until: datetime | None

    def held_by_other(self, holder: str, now: datetime) -> bool:
        return (
            self.holder is not None
            and self.holder != holder
            and self.held_until is not None
            and self.held_until >= now
        )


@dataclass(frozen=True, slots=True)
class Backlog:
    """Where the publisher is against the outbox, read in one transaction."""

    position: Position
    head: int
    oldest_unpublished_at: datetime | None

    @property
    def revisions(self) -> int:
        return max(0, self.head - self.position.revision)


async def ensure_row(tx: Tx) -> None:
    await tx.execute(
        "INSERT INTO stream_publisher (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
    )


async def read_backlog(tx: Tx) -> Backlog:
    position = await read_position(tx)
    head = int(await tx.fetchval("SELECT value FROM revision_counter WHERE id = 1") or 0)
    oldest = await tx.fetchval(
        "SELECT created_at FROM outbox WHERE revision > $1 ORDER BY revision LIMIT 1",
        position.revision,
    )
    return Backlog(position, head, None if oldest is None else tx.dialect.read_time(oldest))


async def read_position(tx: Tx) -> Position:
    row = await tx.fetchrow(
        "SELECT revision, stream_sequence, published_at, holder, held_until "
        "FROM stream_publisher WHERE id = 1"
    )
    if row is None:
        return Position(0, None, None, None, None)
    read_time = tx.dialect.read_time
    return Position(
        revision=int(row["revision"]),
        stream_sequence=row["stream_sequence"],
        published_at=None if row["published_at"] is None else read_time(row["published_at"]),
        holder=row["holder"],
        held_until=None if row["held_until"] is None else read_time(row["held_until"]),
    )


async def claim(tx: Tx, holder: str, seconds: float) -> int | None:
    """Take or renew the lease; the position when this process holds it."""
    return await claim_cursor(tx, "stream_publisher", holder, seconds)


async def advance(tx: Tx, holder: str, revision: int, stream_sequence: int, seconds: float) -> bool:
    """Move the position forward and renew the lease, while this process holds it."""
    now = utc_now()
    moved = await tx.execute(
        "UPDATE stream_publisher SET revision = $2, stream_sequence = $3, published_at = $4, "
        "held_until = $5 WHERE id = 1 AND holder = $1 AND revision <= $2",
        holder,
        revision,
        stream_sequence,
        tx.dialect.time(now),
        tx.dialect.time(now + timedelta(seconds=seconds)),
    )
    return moved > 0


async def release(tx: Tx, holder: str) -> None:
    await tx.execute(
        "UPDATE stream_publisher SET holder = NULL, held_until = NULL WHERE id = 1 AND holder = $1",
        holder,
    )


def report(backlog: Backlog, now: datetime) -> dict[str, object]:
    """`potok-state stream`: the position as JSON-ready values."""
    current = backlog.position
    held = current.held_until is not None and current.held_until >= now
    oldest = backlog.oldest_unpublished_at
    return {
        "revision": current.revision,
        "streamSequence": current.stream_sequence,
        "publishedAt": None if current.published_at is None else current.published_at.isoformat(),
        "head": backlog.head,
        "backlog": backlog.revisions,
        "lagSeconds": 0.0 if oldest is None else round((now - oldest).total_seconds(), 3),
        "publisher": current.holder if held else None,
        "heldUntil": current.held_until.isoformat() if held and current.held_until else None,
    }
