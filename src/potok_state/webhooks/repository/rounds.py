"""A round of the delivery worker: the attempts that finished since the last
round are recorded (attempts.py), leases of deliveries the worker will not
send are given back, and the next due deliveries are claimed (claims.py), all
in one transaction: one commit (on SQLite one unit of the writer thread, one
fsync) and on PostgreSQL one set of round trips for the whole exchange."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from potok_state.clock import utc_now
from potok_state.storage.database import Tx
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.policy import FailurePolicy
from potok_state.webhooks.repository.attempts import AttemptRecorder, AttemptResult, Recorded
from potok_state.webhooks.repository.claims import (
    WALK_DUE_INDEX,
    Claimed,
    ClaimedDelivery,
    ClaimRequest,
    DeliveryClaims,
)
from potok_state.webhooks.sealing import SecretSeal

# A round's commit does not wait for its WAL to reach the disk: should
# PostgreSQL itself crash, the last rounds (at most a few hundred ms) are lost,
# which sends their attempts again and frees their leases, as a worker's crash
# does (at-least-once). Changes to states never take this path.
ROUND_SETTINGS = (("synchronous_commit", "off"),)


@dataclass(frozen=True, slots=True)
class RoundResult:
    recorded: Recorded
    claimed: list[ClaimedDelivery]
    """In id order."""


class DeliveryRounds:
    def __init__(self, store: SqlStateStore, seal: SecretSeal) -> None:
        self.db = store.db
        self.claims = DeliveryClaims(store, seal)
        self.attempts = AttemptRecorder(store)

    async def run(
        self,
        finished: Sequence[AttemptResult],
        policy: FailurePolicy,
        claim: ClaimRequest | None,
        release: Sequence[int] = (),
    ) -> RoundResult:
        now = utc_now()

        async def work(tx: Tx) -> tuple[Recorded, Claimed | None]:
            recorded = await self.attempts.record(tx, finished, policy, now)
            await self.claims.release(tx, release)
            claimed = None if claim is None else await self.claims.claim(tx, claim, now)
            return recorded, claimed

        recorded, claimed = await self.db.write(
            work, settings=ROUND_SETTINGS + (WALK_DUE_INDEX if claim is not None else ())
        )
        # Secrets are opened after the commit, outside the writer's unit.
        opened = [] if claimed is None else self.claims.opened(claimed, now)
        return RoundResult(recorded, opened)
