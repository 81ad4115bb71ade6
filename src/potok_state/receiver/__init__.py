"""The receiver kit (docs/receiver.md): verify webhook deliveries from the Potok
State Service, parse them into typed events, and drop duplicates; with thin
adapters for Starlette/FastAPI, aiohttp and Flask. Imports no web framework until
an adapter's handler runs."""

from potok_state.receiver.adapters import aiohttp_handler, flask_view, starlette_endpoint
from potok_state.receiver.dedup import (
    AsyncDedupStore,
    AsyncRedisDedupStore,
    DedupStore,
    MemoryDedupStore,
    RedisDedupStore,
)
from potok_state.receiver.gate import EntityChange, MalformedEvent, ReceivedEvent, WebhookReceiver
from potok_state.receiver.signatures import (
    DEFAULT_TOLERANCE_SECONDS,
    InvalidDelivery,
    MissingSignature,
    Scheme,
    SignatureMismatch,
    StaleTimestamp,
    verify,
)

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "AsyncDedupStore",
    "AsyncRedisDedupStore",
    "DedupStore",
    "EntityChange",
    "InvalidDelivery",
    "MalformedEvent",
    "MemoryDedupStore",
    "MissingSignature",
    "ReceivedEvent",
    "RedisDedupStore",
    "Scheme",
    "SignatureMismatch",
    "StaleTimestamp",
    "WebhookReceiver",
    "aiohttp_handler",
    "flask_view",
    "starlette_endpoint",
    "verify",
]
