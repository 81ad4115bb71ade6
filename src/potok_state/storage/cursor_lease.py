"""A cursor that one process at a time moves: a single row (id 1) with the
cursor's `revision` and the lease of the process moving it (`holder`,
`held_until`). The external backend's replicator (`external_sync`) and the event
stream's publisher (`stream_publisher`) each keep one."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from potok_state.clock import utc_now
from potok_state.storage.database import Tx

CursorTable = Literal["external_sync", "stream_publisher"]


async def claim_cursor(tx: Tx, table: CursorTable, holder: str, seconds: float) -> int | None:
    """Take or renew the lease for `seconds`; the cursor when `holder` holds it,
    None while another process does."""
    now = utc_now()
    value = await tx.fetchval(
        f"UPDATE {table} SET holder = $1, held_until = $2 "
        "WHERE id = 1 AND (holder IS NULL OR holder = $1 OR held_until < $3) RETURNING revision",
        holder,
        tx.dialect.time(now + timedelta(seconds=seconds)),
        tx.dialect.time(now),
    )
    return None if value is None else int(value)
