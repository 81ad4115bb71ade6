"""The webhook tables' rows as the code reads them, and the statuses a
delivery goes through (docs/webhooks.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from potok_state.changes.selection import event_selected
from potok_state.storage.database import Row
from potok_state.storage.dialect import Dialect
from potok_state.webhooks.sealing import SecretSeal

PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
# Not sent: the subscription was disabled (`replay?missing=true` sends these).
SKIPPED = "skipped"

SUBSCRIPTION_COLUMNS = (
    "id, url, events, entity_types, secret, description, active, consecutive_failures, "
    "disabled_reason, last_delivery_at, last_error, after_revision, created_at, updated_at, "
    "failed_attempts, failing_since, failing_notified, circuit_open_until, circuit_probes, "
    "previous_secret, previous_secret_until, rate_limit, timeout_ms, max_attempts"
)
SELECT_SUBSCRIPTION = f"SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = $1"
DELIVERY_COLUMNS = (
    "id, subscription_id, revision, event_id, event, status, attempts, attempt_limit, "
    "next_attempt_at, last_status_code, last_error, created_at, updated_at"
)
# The delivery's event is still in the outbox (retention prunes old ones).
EVENT_KEPT = "EXISTS (SELECT 1 FROM outbox o WHERE o.revision = webhook_deliveries.revision)"
EVENT_PRUNED = "the event is no longer kept (retention)"


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    id: str
    url: str
    events: list[str]
    entity_types: list[str] | None
    secret: str
    description: str | None
    active: bool
    consecutive_failures: int
    disabled_reason: str | None
    last_delivery_at: datetime | None
    last_error: str | None
    after_revision: int
    created_at: datetime
    updated_at: datetime
    failed_attempts: int = 0
    failing_since: datetime | None = None
    failing_notified: int = 0
    circuit_open_until: datetime | None = None
    circuit_probes: int = 0
    previous_secret: str | None = None
    previous_secret_until: datetime | None = None
    rate_limit: int | None = None
    timeout_ms: int | None = None
    max_attempts: int | None = None

    def attempt_limit(self, default: int) -> int:
        return self.max_attempts or default

    def matches(self, event: str, entity: str | None) -> bool:
        if entity is not None and self.entity_types is not None and entity not in self.entity_types:
            return False
        return event_selected(self.events, event)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    succeeded: bool


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    subscription_id: str
    revision: int
    event_id: str
    event: str
    status: str
    attempts: int
    attempt_limit: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    attempt_log: list[AttemptRow]


def read_subscription(dialect: Dialect, row: Row, seal: SecretSeal | None) -> SubscriptionRow:
    """A subscription row with its secrets opened (left sealed without `seal`:
    the dispatcher only matches events)."""
    last_delivery_at = row["last_delivery_at"]
    secret, previous_secret = row["secret"], row["previous_secret"]
    if seal is not None:
        secret = seal.open(secret, row["id"])
        if previous_secret is not None:
            previous_secret = seal.open(previous_secret, row["id"])

    def time_or_none(column: str) -> datetime | None:
        value = row[column]
        return None if value is None else dialect.read_time(value)

    return SubscriptionRow(
        id=row["id"],
        url=row["url"],
        events=_json_list(row["events"]) or [],
        entity_types=_json_list(row["entity_types"]),
        secret=secret,
        description=row["description"],
        active=dialect.read_bool(row["active"]),
        consecutive_failures=row["consecutive_failures"],
        disabled_reason=row["disabled_reason"],
        last_delivery_at=dialect.read_time(last_delivery_at) if last_delivery_at else None,
        last_error=row["last_error"],
        after_revision=row["after_revision"],
        created_at=dialect.read_time(row["created_at"]),
        updated_at=dialect.read_time(row["updated_at"]),
        failed_attempts=row["failed_attempts"],
        failing_since=time_or_none("failing_since"),
        failing_notified=row["failing_notified"],
        circuit_open_until=time_or_none("circuit_open_until"),
        circuit_probes=row["circuit_probes"],
        previous_secret=previous_secret,
        previous_secret_until=time_or_none("previous_secret_until"),
        rate_limit=row["rate_limit"],
        timeout_ms=row["timeout_ms"],
        max_attempts=row["max_attempts"],
    )


def _json_list(value: object) -> list[str] | None:
    """A JSON array column; SQL NULL and JSON null (older rows) both mean None."""
    if value is None:
        return None
    parsed = orjson.loads(value) if isinstance(value, str | bytes) else value
    if parsed is None:
        return None
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]
