"""Claims: due deliveries leased to a worker.

Claims are leases: a claimed delivery carries `locked_until`; if its worker dies
the lease runs out and another worker (or the restarted one) sends it again, so
delivery is at-least-once. On PostgreSQL, claims use FOR UPDATE SKIP LOCKED so
many workers share the queue; on SQLite the writer's lock makes each claim
exclusive. One transaction leases many deliveries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from potok_state.changes.model import EventRecord
from potok_state.clock import utc_now
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


def fair_share(subscriptions: int, concurrency: int, per_subscription: int) -> int:
    """Slots one of `subscriptions` with work may hold: all it may have alone,
    otherwise an equal part of the worker with one part kept free."""
    if subscriptions <= 1:
        return per_subscription
    return min(per_subscription, max(1, concurrency // (subscriptions + 1)))


class DeliveryClaims:
    def __init__(self, store: SqlStateStore, seal: SecretSeal) -> None:
        self.seal = seal
        self.db = store.db
        self.dialect = store.dialect

    async def claim_due(
        self,
        *,
        limit: int,
        lease: timedelta,
        in_flight: Mapping[str, int],
        per_subscription: int,
        concurrency: int,
        rates: DeliveryRates | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries, at most one in flight per
        ordering key: a delivery waits while an older one for the same entity
        and subscription is still pending, so each subscriber sees an entity's
        events in revision order.

        Slots are shared fairly (`fair_share`): while several subscriptions have
        work, each may hold its share of the worker's `concurrency` (`in_flight`:
        what this worker already sends per subscription), one share is kept free
        for a subscription whose work arrives next, and none holds more than
        `per_subscription`; so receivers that hang hold only their own shares.
        Subscriptions at their share are left out of the candidates in SQL:
        otherwise their backlog fills the candidate window and hides the others'
        deliveries until it drains.

        A subscription whose circuit is open is left out the same way until its
        next probe is due; then one delivery is claimed as the probe, and the
        circuit is pushed past the lease so no other worker probes meanwhile.
        A subscription with a `rateLimit` gets no more deliveries than `rates`
        allows now (and none while its bucket is empty)."""
        dialect = self.dialect
        now = utc_now()
        active = [sub for sub, count in in_flight.items() if count > 0]
        share = fair_share(len(active), concurrency, per_subscription)
        held = [sub for sub in active if in_flight[sub] >= share]
        if rates is not None:
            held.extend(rates.exhausted())
        saturated = dialect.text_list(held)
        candidates = (
            "SELECT d.id, d.subscription_id, (SELECT s.circuit_open_until IS NOT NULL "
            "FROM webhook_subscriptions s WHERE s.id = d.subscription_id) AS probing, "
            "(SELECT s.rate_limit FROM webhook_subscriptions s "
            "WHERE s.id = d.subscription_id) AS rate_limit "
            "FROM webhook_deliveries d WHERE d.status = 'pending' "
            "AND d.next_attempt_at <= $1 "
            "AND (d.locked_until IS NULL OR d.locked_until < $1) "
            # A subscription disabled through the API pauses its deliveries; an
            # open circuit holds them until its next probe.
            "AND EXISTS (SELECT 1 FROM webhook_subscriptions s "
            "WHERE s.id = d.subscription_id AND s.active "
            "AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= $1)) "
            # The oldest pending delivery of its ordering key. Written as a
            # min() so the probe can only be answered from the ordering index:
            # as `NOT EXISTS (an older one)`, a table without statistics yet was
            # planned over the due index, O(n^2) (5.8 s a claim with 9,000 queued).
            "AND d.id = (SELECT min(e.id) FROM webhook_deliveries e "
            "WHERE e.ordering_key = d.ordering_key AND e.status = 'pending') "
            f"AND d.subscription_id {dialect.not_in_list('$3')} "
            "ORDER BY d.next_attempt_at, d.id LIMIT $2" + dialect.skip_locked
        )

        async def work(tx: Tx) -> Sequence[Row]:
            found = await tx.fetch(candidates, dialect.time(now), 2 * limit, saturated)
            busy = set(active) | {row["subscription_id"] for row in found}
            cap = fair_share(len(busy), concurrency, per_subscription)
            taken = dict(in_flight)
            ids: list[int] = []
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
                    if not await self._take_probe(tx, subscription, now, lease):
                        continue
                    probed.add(subscription)
                    probes.add(row["id"])
                taken[subscription] = taken.get(subscription, 0) + 1
                ids.append(row["id"])
                if len(ids) == limit:
                    break
            if not ids:
                return []
            id_list = dialect.int_list(ids)
            await tx.execute(
                f"UPDATE webhook_deliveries SET locked_until = $2 WHERE id {dialect.in_ints('$1')}",
                id_list,
                dialect.time(now + lease),
            )
            claimed = await tx.fetch(
                "SELECT d.id AS delivery_id, d.subscription_id, d.attempts, d.attempt_limit, "
                "s.url, s.secret, s.previous_secret, s.previous_secret_until, s.timeout_ms, "
                "o.revision, o.event_id, o.event, o.entity_type, o.entity_id, "
                "o.data, o.created_at FROM webhook_deliveries d "
                "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
                "JOIN outbox o ON o.revision = d.revision "
                f"WHERE d.id {dialect.in_ints('$1')} ORDER BY d.id",
                id_list,
            )
            if len(claimed) < len(ids):
                # Requeued by a retry while retention pruned its event: it
                # cannot be sent, and must not hold its entity's later ones.
                await tx.execute(
                    f"UPDATE webhook_deliveries SET status = $2, last_error = $3, "
                    f"locked_until = NULL WHERE id {dialect.in_ints('$1')} AND NOT {EVENT_KEPT}",
                    id_list,
                    FAILED,
                    EVENT_PRUNED,
                )
            return claimed

        probes: set[int] = set()
        rows = await self.db.write(work)
        return [
            ClaimedDelivery(
                id=row["delivery_id"],
                subscription_id=row["subscription_id"],
                url=row["url"],
                secret=self.seal.open(row["secret"], row["subscription_id"]),
                attempt=row["attempts"] + 1,
                attempt_limit=row["attempt_limit"],
                event=event_record(dialect, row),
                previous_secret=self._previous_secret(row, now),
                probe=row["delivery_id"] in probes,
                timeout_ms=row["timeout_ms"],
            )
            for row in rows
        ]

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
