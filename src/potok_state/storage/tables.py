"""SQL schema. Alembic migrations under `migrations/` create exactly this; a test
checks that they never drift apart."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

JsonDocument = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)
# BIGINT identity on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
Serial = BigInteger().with_variant(Integer, "sqlite")

states = Table(
    "states",
    metadata,
    Column("entity_type", String(64), primary_key=True),
    Column("entity_id", String(128), primary_key=True),
    Column("status", String(64), nullable=False),
    Column("metadata", JsonDocument, nullable=False),
    Column("version", Integer, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # A lease (docs/leases.md): seconds, and when it lapses unless renewed.
    Column("lease_ttl", Integer),
    Column("lease_expires_at", Timestamp),
    # A status-filtered list sorted by update reads its page from here alone.
    Index("ix_states_type_status_revision", "entity_type", "status", "revision"),
    Index("ix_states_type_updated", "entity_type", "updated_at", "entity_id"),
    Index("ix_states_type_created", "entity_type", "created_at", "entity_id"),
    Index("ix_states_type_revision", "entity_type", "revision"),
    Index(
        "ix_states_lease_due",
        "lease_expires_at",
        postgresql_where=text("lease_expires_at IS NOT NULL"),
        sqlite_where=text("lease_expires_at IS NOT NULL"),
    ),
)

state_history = Table(
    "state_history",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("entity_type", String(64), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event", String(64), nullable=False),
    Column("previous_status", String(64)),
    Column("new_status", String(64)),
    Column("metadata", JsonDocument, nullable=False),
    Column("reason", Text),
    Column("actor", String(128), nullable=False),
    Column("changed_at", Timestamp, nullable=False),
    # The creation time of the life this row belongs to (NULL for a deletion), so
    # a read as of this row needs no other row (docs/data-model.md, "Reads as of").
    Column("created_at", Timestamp),
    Index("ix_state_history_entity", "entity_type", "entity_id", "revision"),
)

# One row, written by retention (events/retention.py): every history row up to
# `revision` (the newest pruned, stamped `changed_at`) may be gone; every later
# one is kept. Reads as of a revision use it to tell "did not exist" (404) from
# "no longer kept" (410). No row: nothing was pruned.
history_horizon = Table(
    "history_horizon",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
    Column("changed_at", Timestamp, nullable=False),
)

# Transition tables defined over the API (states/definitions.py): one row per
# type ever defined. `definition` is the table as JSON text, NULL once removed
# (the row keeps counting versions, so If-Match never sees a version twice).
state_machine_definitions = Table(
    "state_machine_definitions",
    metadata,
    Column("entity_type", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("definition", Text),
    Column("revision", BigInteger, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("updated_by", String(128), nullable=False),
)

# Every change of a definition: who, when, the table before and after (NULL:
# none), with the revision of its `machine.updated` event.
state_machine_history = Table(
    "state_machine_history",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("entity_type", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("previous", Text),
    Column("definition", Text),
    Column("actor", String(128), nullable=False),
    Column("changed_at", Timestamp, nullable=False),
    Index("ix_state_machine_history_entity", "entity_type", "revision"),
)

# The transactional outbox: one row per change, written in the same transaction
# as the state and history rows. `data` is the event's `data` object as JSON text;
# the delivered body is assembled from these columns byte-for-byte the same way
# every time, so signatures are stable across retries and replays.
outbox = Table(
    "outbox",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("event", String(128), nullable=False),
    Column("entity_type", String(64)),
    Column("entity_id", String(128)),
    Column("data", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_outbox_created", "created_at"),
)

# One row: the store-wide revision. Bumping it inside each change's transaction
# serializes commits in revision order, so a reader that has seen revision N has
# seen everything below N (the change feed, watch and replay rely on this).
revision_counter = Table(
    "revision_counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", BigInteger, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(400), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("outcome", LargeBinary, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_idempotency_keys_created", "created_at"),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("entity_types", JSON),
    Column("secret", Text, nullable=False),
    Column("description", Text),
    Column("active", Boolean, nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("disabled_reason", Text),
    Column("last_delivery_at", Timestamp),
    Column("last_error", Text),
    # Events with a revision above this one are delivered; a subscription never
    # receives what happened before it existed (use replay for that).
    Column("after_revision", BigInteger, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # The disable policy and the circuit breaker (docs/webhooks.md):
    # `consecutive_failures` counts deliveries that exhausted their retries,
    # `failed_attempts` single attempts; both and the circuit reset on a success.
    Column("failed_attempts", Integer, nullable=False, server_default=text("0")),
    Column("failing_since", Timestamp),
    # The highest share of the disable policy announced (0, 50 or 90 percent).
    Column("failing_notified", Integer, nullable=False, server_default=text("0")),
    Column("circuit_open_until", Timestamp),
    Column("circuit_probes", Integer, nullable=False, server_default=text("0")),
    # After a rotation the old secret still signs until `previous_secret_until`.
    Column("previous_secret", Text),
    Column("previous_secret_until", Timestamp),
    # Per-subscription overrides (null: the WEBHOOK_* setting): deliveries per
    # second, per-attempt timeout, attempts per delivery.
    Column("rate_limit", Integer),
    Column("timeout_ms", Integer),
    Column("max_attempts", Integer),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("subscription_id", String(40), nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("event", String(128), nullable=False),
    # Deliveries that share an ordering key reach their subscriber one at a
    # time, in id order. The key is `{subscription}/{entity}:{id}` for entity
    # events and `{subscription}/event:{event id}` otherwise: one column, so the
    # claim's "is an older one pending?" probe has exactly one index to use
    # whatever the planner's statistics say.
    Column("ordering_key", String(240), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("attempt_limit", Integer, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("locked_until", Timestamp),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # Both queue indexes cover pending rows only, so the claim's probes have one
    # obviously right index each, even before the planner has statistics.
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        "id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index(
        "ix_webhook_deliveries_order",
        "ordering_key",
        "id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index("ix_webhook_deliveries_subscription", "subscription_id", "id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("delivery_id", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("succeeded", Boolean, nullable=False),
    Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),
)

# One row: the last outbox revision turned into deliveries.
webhook_dispatch_cursor = Table(
    "webhook_dispatch_cursor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
)

# One row, written by the external backend only (docs/external.md): every
# change up to `revision` is in the Admin Service; `holder` is the process
# draining the journal to it until `held_until`.
external_sync = Table(
    "external_sync",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
    Column("holder", String(64)),
    Column("held_until", Timestamp),
)

# One row, written by the event stream's publisher (docs/stream.md): every
# outbox event up to `revision` is in the JetStream stream, the last of them at
# `stream_sequence`; `holder` is the process publishing until `held_until`.
stream_publisher = Table(
    "stream_publisher",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
    Column("stream_sequence", BigInteger),
    Column("published_at", Timestamp),
    Column("holder", String(64)),
    Column("held_until", Timestamp),
)

# The operator console's sessions (docs/console.md). The cookie holds a random
# token; only its SHA-256 is stored. `key_check` ties the session to the API
# key's current value (an HMAC keyed by the token), so a key removed from
# API_KEYS, or given a new value, ends the sessions opened with it.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_name", String(128), nullable=False),
    Column("key_check", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Index("ix_console_sessions_expires", "expires_at"),
)
