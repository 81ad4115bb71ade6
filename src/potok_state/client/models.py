"""The wire models the client sends and returns: the service's own (field names are
the JSON names, camelCase), so the client cannot drift from the API.

These modules hold only pydantic models; importing them loads no FastAPI, SQL or
Redis code (a test holds that). The error body lives in `client.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

from potok_state.events.schemas import ChangePage, Event
from potok_state.states.machine_schemas import LeasePolicyView, StateMachineView
from potok_state.states.schemas import (
    BatchHeartbeatResult,
    BatchItem,
    BatchItemResult,
    BatchResult,
    HeartbeatResult,
    HistoryEntry,
    HistoryPage,
    ItemError,
    LeaseView,
    Metadata,
    StatePage,
    StateView,
)
from potok_state.webhooks.schemas import (
    Attempt,
    Delivery,
    DeliveryPage,
    ReplayResult,
    Subscription,
    SubscriptionCreated,
    TestResult,
)

__all__ = [
    "Attempt",
    "BatchHeartbeatResult",
    "BatchItem",
    "BatchItemResult",
    "BatchResult",
    "ChangePage",
    "Delivery",
    "DeliveryPage",
    "Event",
    "HeartbeatResult",
    "HistoryEntry",
    "HistoryPage",
    "ItemError",
    "LeasePolicyView",
    "LeaseView",
    "Metadata",
    "QueryPage",
    "ReplayResult",
    "StateMachineView",
    "StatePage",
    "StateView",
    "Subscription",
    "SubscriptionCreated",
    "TestResult",
]


@dataclass(frozen=True, slots=True)
class QueryPage:
    """One page of a query, with the revision it was read at: watch with
    `after=revision` to see every change the page does not show."""

    items: list[StateView]
    next_cursor: str | None
    revision: int
