"""Subscriptions: created, listed, changed and deleted, with their secrets
sealed at rest (webhooks/sealing.py) and rotated with a grace period
(docs/webhooks.md)."""

from __future__ import annotations

from datetime import datetime

import orjson

from potok_state.clock import utc_now
from potok_state.storage.database import Tx
from potok_state.storage.idempotency import IdempotencyWrite, keyed
from potok_state.storage.sql import SqlStateStore
from potok_state.webhooks.repository.rows import (
    SELECT_SUBSCRIPTION,
    SUBSCRIPTION_COLUMNS,
    SubscriptionRow,
    read_subscription,
)
from potok_state.webhooks.sealing import SecretSeal

# Columns a subscription update may set, each with how its value is stored.
_UPDATABLE = (
    "url",
    "events",
    "entity_types",
    "description",
    "active",
    "consecutive_failures",
    "disabled_reason",
    "failed_attempts",
    "failing_since",
    "failing_notified",
    "circuit_open_until",
    "circuit_probes",
    "rate_limit",
    "timeout_ms",
    "max_attempts",
)


class SubscriptionRepository:
    def __init__(self, store: SqlStateStore, seal: SecretSeal) -> None:
        self.seal = seal
        self.db = store.db
        self.dialect = store.dialect

    async def create(
        self, values: dict[str, object], answer: IdempotencyWrite[SubscriptionRow] | None = None
    ) -> SubscriptionRow:
        dialect = self.dialect
        now = dialect.time(utc_now())

        async def work(tx: Tx) -> SubscriptionRow:
            head = await tx.fetchval("SELECT value FROM revision_counter WHERE id = 1")
            await tx.execute(
                "INSERT INTO webhook_subscriptions (id, url, events, entity_types, secret, "
                "description, active, consecutive_failures, after_revision, created_at, "
                "updated_at, rate_limit, timeout_ms, max_attempts) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9, $10, $11, $12)",
                values["id"],
                values["url"],
                orjson.dumps(values["events"]).decode(),
                None
                if values.get("entity_types") is None
                else orjson.dumps(values["entity_types"]).decode(),
                self.seal.seal(str(values["secret"]), str(values["id"])),
                values.get("description"),
                True,
                int(head or 0),
                now,
                values.get("rate_limit"),
                values.get("timeout_ms"),
                values.get("max_attempts"),
            )
            row = await tx.fetchrow(SELECT_SUBSCRIPTION, values["id"])
            assert row is not None
            return read_subscription(dialect, row, self.seal)

        return await self.db.write(keyed(work, answer))

    async def seal_stored_secrets(self) -> int:
        """At startup: seal secrets stored in the clear (rows from before
        sealing existed) or with the previous WEBHOOK_SECRET_KEY, with the
        current key. `SecretKeyMismatch` when some were sealed with a key this
        process does not have. Returns how many values were sealed again."""
        seal = self.seal

        async def work(tx: Tx) -> int:
            resealed = 0
            rows = await tx.fetch(
                "SELECT id, secret, previous_secret FROM webhook_subscriptions"
                + self.dialect.for_update
            )
            for row in rows:
                values = [row["secret"], row["previous_secret"]]
                if not any(value is not None and seal.needs_sealing(value) for value in values):
                    continue
                secret, previous = (
                    None if value is None else seal.seal(seal.open(value, row["id"]), row["id"])
                    for value in values
                )
                await tx.execute(
                    "UPDATE webhook_subscriptions SET secret = $2, previous_secret = $3 "
                    "WHERE id = $1",
                    row["id"],
                    secret,
                    previous,
                )
                resealed += 1
            return resealed

        return await self.db.write(work)

    async def list_all(self) -> list[SubscriptionRow]:
        rows = await self.db.read(
            lambda tx: tx.fetch(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions ORDER BY created_at, id"
            )
        )
        return [read_subscription(self.dialect, row, self.seal) for row in rows]

    async def get(self, subscription_id: str) -> SubscriptionRow | None:
        row = await self.db.read(lambda tx: tx.fetchrow(SELECT_SUBSCRIPTION, subscription_id))
        return None if row is None else read_subscription(self.dialect, row, self.seal)

    async def update(
        self,
        subscription_id: str,
        values: dict[str, object],
        answer: IdempotencyWrite[SubscriptionRow | None] | None = None,
    ) -> SubscriptionRow | None:
        """Set `values` (none: read it as it is); None when there is no such subscription."""
        dialect = self.dialect
        assignments: list[str] = []
        args: list[object] = [subscription_id]
        for column in _UPDATABLE:
            if column not in values:
                continue
            value = values[column]
            if column in ("events", "entity_types") and value is not None:
                value = orjson.dumps(value).decode()
            args.append(value)
            assignments.append(f"{column} = ${len(args)}")
        args.append(dialect.time(utc_now()))
        assignments.append(f"updated_at = ${len(args)}")
        sql = f"UPDATE webhook_subscriptions SET {', '.join(assignments)} WHERE id = $1"

        async def work(tx: Tx) -> SubscriptionRow | None:
            if values and not await tx.execute(sql, *args):
                return None
            row = await tx.fetchrow(SELECT_SUBSCRIPTION, subscription_id)
            return None if row is None else read_subscription(dialect, row, self.seal)

        return await self.db.write(keyed(work, answer))

    async def delete(
        self, subscription_id: str, answer: IdempotencyWrite[bool] | None = None
    ) -> bool:
        async def work(tx: Tx) -> bool:
            await tx.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN "
                "(SELECT id FROM webhook_deliveries WHERE subscription_id = $1)",
                subscription_id,
            )
            await tx.execute(
                "DELETE FROM webhook_deliveries WHERE subscription_id = $1", subscription_id
            )
            return bool(
                await tx.execute("DELETE FROM webhook_subscriptions WHERE id = $1", subscription_id)
            )

        return await self.db.write(keyed(work, answer))

    async def rotate_secret(
        self,
        subscription_id: str,
        secret: str,
        previous_until: datetime,
        answer: IdempotencyWrite[SubscriptionRow | None] | None = None,
    ) -> SubscriptionRow | None:
        """The current secret becomes the previous one, signing until `previous_until`."""
        dialect = self.dialect

        async def work(tx: Tx) -> SubscriptionRow | None:
            changed = await tx.execute(
                "UPDATE webhook_subscriptions SET previous_secret = secret, "
                "previous_secret_until = $3, secret = $2, updated_at = $4 WHERE id = $1",
                subscription_id,
                self.seal.seal(secret, subscription_id),
                dialect.time(previous_until),
                dialect.time(utc_now()),
            )
            if not changed:
                return None
            row = await tx.fetchrow(SELECT_SUBSCRIPTION, subscription_id)
            return None if row is None else read_subscription(dialect, row, self.seal)

        return await self.db.write(keyed(work, answer))
