"""Claims: due deliveries leased to a worker.

Claims are leases: a claimed delivery carries `locked_until`; if its worker dies
the lease runs out and another worker (or the restarted one) sends it again, so
delivery is at-least-once. On PostgreSQL, claims use FOR UPDATE SKIP LOCKED so
many workers share the queue; on SQLite the writer's lock makes each claim
exclusive. One transaction leases many deliveries, usually the same one that
records the attempts finished meanwhile (rounds.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from potok_state.changes.model import EventRecord
from potok_state.storage.database import Row, Tx
from potok_state.storage.rows import event_record
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.rates import DeliveryRates
from potok_state.webhooks.repository.rows import EVENT_KEPT, EVENT_PRUNED, FAILED
from potok_state.webhooks.sealing import SecretSeal


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    id: int
    subscription_id: str
    url: str
    secret: str
    attempt: int
    attempt_limit: int
    event: EventRecord
    previous_secret: str | None = None
    """The secret before a rotation, while it still signs."""
    probe: bool = False
    """Sent to test an open circuit."""
    timeout_ms: int | None = None
    """The subscription's own per-attempt timeout."""


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a worker asks of one claim."""

    limit: int
    lease: timedelta
    held: Mapping[str, int]
    """Deliveries this worker holds per subscription (claimed, not yet recorded)."""
    per_subscription: int
    """The most one subscription may hold."""
    concurrency: int
    """The most the worker holds in all."""
    rates: DeliveryRates | None = None


@dataclass(slots=True)
class Claimed:
    """Claimed rows, read in the claim's transaction and opened after it."""

    rows: Sequence[Row] = ()
    probes: set[int] = field(default_factory=set)


def fair_share(subscriptions: int, concurrency: int, per_subscription: int) -> int:
    """Slots one of `subscriptions` with work may hold: all it may have alone,
    otherwise an equal part of the worker with one part kept free."""
    if subscriptions <= 1:
        return per_subscription
    return min(per_subscription, max(1, concurrency // (subscriptions + 1)))


# The candidates: due, unleased, the oldest pending delivery of their ordering
# key, of an active subscription whose circuit is closed or due for a probe.
_CANDIDATES = (
    "SELECT d.id, d.subscription_id, (SELECT s.circuit_open_until IS NOT NULL "
    "FROM webhook_subscriptions s WHERE s.id = d.subscription_id) AS probing, "
    "(SELECT s.rate_limit FROM webhook_subscriptions s "
    "WHERE s.id = d.subscription_id) AS rate_limit "
    "FROM webhook_deliveries d WHERE d.status = 'pending' "
    "AND d.next_attempt_at <= $1 "
    "AND (d.locked_until IS NULL OR d.locked_until < $1) "
    # A subscription disabled through the API pauses its deliveries; an open
    # circuit holds them until its next probe. (Subqueries, not a join: joined,
    # the planner sorted the whole backlog instead of walking the due index.)
    "AND EXISTS (SELECT 1 FROM webhook_subscriptions s "
    "WHERE s.id = d.subscription_id AND s.active "
    "AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= $1)) "
    # The oldest pending delivery of its ordering key. Written as a min() so
    # the probe can only be answered from the ordering index: as `NOT EXISTS
    # (an older one)`, a table without statistics yet was planned over the due
    # index, O(n^2) (5.8 s a claim with 9,000 queued). `<=` means `=` here (d
    # is one of those pending rows) but is estimated to keep a third of the
    # rows, not 0.5 % (see WALK_DUE_INDEX).
    "AND d.id <= (SELECT min(e.id) FROM webhook_deliveries e "
    "WHERE e.ordering_key = d.ordering_key AND e.status = 'pending') "
    "AND d.subscription_id {not_in} "
    "ORDER BY d.next_attempt_at, d.id LIMIT $2{lock}"
)
# The candidates are the first rows along the due index that pass the
# filters. The planner cannot know that most rows pass (a leased delivery or
# a later event of a pending entity is the exception), so its estimate of the
# matches is tiny, and its plan collects every due row and sorts them: 15-50
# ms a claim with a few thousand queued, against under 1 ms for the walk. A
# claim's transaction rules that plan out (`Database.write(settings=...)`; a
# prepared statement keeps the plan made under these settings).
WALK_DUE_INDEX = (("enable_sort", "off"), ("enable_bitmapscan", "off"))
_CLAIMED_COLUMNS = (
    "d.id AS delivery_id, d.subscription_id, d.attempts, d.attempt_limit, "
    "s.url, s.secret, s.previous_secret, s.previous_secret_until, s.timeout_ms, "
    "o.revision, o.event_id, o.event, o.entity_type, o.entity_id, o.data, o.created_at"
)
# PostgreSQL: lease and read in one statement. A delivery whose event
# retention pruned is not joined, so not leased (see `_fail_pruned`).
_LEASE_POSTGRES = (
    "UPDATE webhook_deliveries d SET locked_until = $2 "
    "FROM webhook_subscriptions s, outbox o "
    "WHERE d.id = ANY($1::bigint[]) AND s.id = d.subscription_id AND o.revision = d.revision "
    f"RETURNING {_CLAIMED_COLUMNS}"
)
# SQLite's RETURNING cannot name the FROM tables: lease, then read.
_LEASE_SQLITE = (
    "UPDATE webhook_deliveries SET locked_until = $2 WHERE id IN (SELECT value FROM json_each($1))"
)
_READ_SQLITE = (
    f"SELECT {_CLAIMED_COLUMNS} FROM webhook_deliveries d "
    "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
    "JOIN outbox o ON o.revision = d.revision "
    "WHERE d.id IN (SELECT value FROM json_each($1))"
)


class DeliveryClaims:
    def __init__(self, store: SqlStateStore, seal: SecretSeal) -> None:
        self.seal = seal
        self.db = store.db
        self.dialect = store.dialect
        dialect = self.dialect
        self._candidates = _CANDIDATES.format(
            not_in=dialect.not_in_list("$3"), lock=dialect.skip_locked
        )

    async def claim(self, tx: Tx, request: ClaimRequest, now: datetime) -> Claimed:
        """Lease up to `request.limit` due deliveries, at most one in flight
        per ordering key: a delivery waits while an older one for the same
        entity and subscription is still pending, so each subscriber sees an
        entity's events in revision order.

        Slots are shared fairly (`fair_share`): while several subscriptions have
        work, each may hold its share of the worker's `concurrency` (`held`:
        what this worker already holds per subscription), one share is kept
        free for a subscription whose work arrives next, and none holds more
        than `per_subscription`; so receivers that hang hold only their own
        shares. Subscriptions at their share are left out of the candidates in
        SQL: otherwise their backlog fills the candidate window and hides the
        others' deliveries until it drains.

        A subscription whose circuit is open is left out the same way until its
        next probe is due; then one delivery is claimed as the probe, and the
        circuit is pushed past the lease so no other worker probes meanwhile.
        A subscription with a `rateLimit` gets no more deliveries than `rates`
        allows now (and none while its bucket is empty)."""
        dialect = self.dialect
        held, rates = request.held, request.rates
        active = [sub for sub, count in held.items() if count > 0]
        share = fair_share(len(active), request.concurrency, request.per_subscription)
        saturated = [sub for sub in active if held[sub] >= share]
        if rates is not None:
            saturated.extend(rates.exhausted())
        found = await tx.fetch(
            self._candidates,
            dialect.time(now),
            2 * request.limit,
            dialect.text_list(saturated),
        )
        busy = set(active) | {row["subscription_id"] for row in found}
        cap = fair_share(len(busy), request.concurrency, request.per_subscription)
        taken = dict(held)
        ids: list[int] = []
        claimed = Claimed()
        probed: set[str] = set()
        for row in found:
            subscription = row["subscription_id"]
            if row["probing"]:
                if subscription in probed:
                    continue
            elif taken.get(subscription, 0) >= cap:
                continue
            if rates is not None and not rates.take(subscription, row["rate_limit"]):
                continue
            if row["probing"]:
                if not await self._take_probe(tx, subscription, now, request.lease):
                    continue
                probed.add(subscription)
                claimed.probes.add(row["id"])
            taken[subscription] = taken.get(subscription, 0) + 1
            ids.append(row["id"])
            if len(ids) == request.limit:
                break
        if not ids:
            return claimed
        until = dialect.time(now + request.lease)
        if dialect.name == "postgresql":
            claimed.rows = await tx.fetch(_LEASE_POSTGRES, ids, until)
        else:
            id_list = dialect.int_list(ids)
            await tx.execute(_LEASE_SQLITE, id_list, until)
            claimed.rows = await tx.fetch(_READ_SQLITE, id_list)
        if len(claimed.rows) < len(ids):
            await self._fail_pruned(tx, ids)
        return claimed

    def opened(self, claimed: Claimed, now: datetime) -> list[ClaimedDelivery]:
        """The claimed deliveries, their secrets opened, in id order."""
        dialect = self.dialect
        return sorted(
            (
                ClaimedDelivery(
                    id=row["delivery_id"],
                    subscription_id=row["subscription_id"],
                    url=row["url"],
                    secret=self.seal.open(row["secret"], row["subscription_id"]),
                    attempt=row["attempts"] + 1,
                    attempt_limit=row["attempt_limit"],
                    event=event_record(dialect, row),
                    previous_secret=self._previous_secret(row, now),
                    probe=row["delivery_id"] in claimed.probes,
                    timeout_ms=row["timeout_ms"],
                )
                for row in claimed.rows
            ),
            key=lambda delivery: delivery.id,
        )

    async def release(self, tx: Tx, ids: Sequence[int]) -> None:
        """Give back leases of deliveries claimed but not sent (the worker is
        stopping, or their subscription failed meanwhile): due again at once."""
        if ids:
            dialect = self.dialect
            await tx.execute(
                "UPDATE webhook_deliveries SET locked_until = NULL "
                f"WHERE id {dialect.in_ints('$1')} AND status = 'pending'",
                dialect.int_list(list(ids)),
            )

    async def _fail_pruned(self, tx: Tx, ids: list[int]) -> None:
        """Requeued by a retry while retention pruned its event: it cannot be
        sent, and must not hold its entity's later ones."""
        dialect = self.dialect
        await tx.execute(
            f"UPDATE webhook_deliveries SET status = $2, last_error = $3, "
            f"locked_until = NULL WHERE id {dialect.in_ints('$1')} AND NOT {EVENT_KEPT}",
            dialect.int_list(ids),
            FAILED,
            EVENT_PRUNED,
        )

    def _previous_secret(self, row: Row, now: datetime) -> str | None:
        previous, until = row["previous_secret"], row["previous_secret_until"]
        if previous is None or until is None or self.dialect.read_time(until) <= now:
            return None
        return self.seal.open(previous, row["subscription_id"])

    async def _take_probe(
        self, tx: Tx, subscription_id: str, now: datetime, lease: timedelta
    ) -> bool:
        """Claim the right to probe an open circuit whose probe is due: true
        for exactly one claimer (the update re-checks the row it locks)."""
        dialect = self.dialect
        return bool(
            await tx.execute(
                "UPDATE webhook_subscriptions SET circuit_open_until = $2 WHERE id = $1 "
                "AND circuit_open_until IS NOT NULL AND circuit_open_until <= $3",
                subscription_id,
                dialect.time(now + lease),
                dialect.time(now),
            )
        )
