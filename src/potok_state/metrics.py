"""Prometheus metrics. One `Metrics` per app (its own registry), handed to the
features that count things; `/metrics` renders it."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# No `*_created` series beside every counter: they double the scrape and say
# nothing an operator asks of this service.
disable_created_metrics()  # type: ignore[no-untyped-call]

UNMATCHED_ROUTE = "<unmatched>"
OTHER = "other"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "potok_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "potok_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.transitions = Counter(
            "potok_state_transitions_total",
            "Applied state changes by entity type, event and new status.",
            ["entity", "event", "status"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "potok_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (succeeded, failed, retrying).",
            ["outcome"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "potok_webhook_delivery_duration_seconds",
            "Duration of one webhook delivery attempt.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.subscription_events = Counter(
            "potok_webhook_subscription_events_total",
            "Operational events about webhook subscriptions: subscription.failing, "
            "subscription.disabled, subscription.enabled (docs/webhooks.md).",
            ["event"],
            registry=self.registry,
        )
        self.circuits_opened = Counter(
            "potok_webhook_circuits_opened_total",
            "Times a subscription's circuit opened (its deliveries wait for a probe).",
            registry=self.registry,
        )
        self.outbox_lag = Gauge(
            "potok_outbox_lag_revisions",
            "Revisions written but not yet dispatched to webhook deliveries.",
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "potok_cache_requests_total",
            "Cache lookups by tier (local, global) and result (hit, miss, error, "
            "skipped: the tier's circuit is open).",
            ["tier", "result"],
            registry=self.registry,
        )
        self.watch_clients = Gauge(
            "potok_watch_clients",
            "Connected watch (SSE) clients.",
            registry=self.registry,
        )
        self.lease_heartbeats = Counter(
            "potok_lease_heartbeats_total",
            "Heartbeats: renewed, or refused (no such state, no lease, or it had lapsed).",
            ["outcome"],
            registry=self.registry,
        )
        self.lease_expiries = Counter(
            "potok_lease_expiries_total",
            "Lapsed leases: changed (the state went to onExpire or was deleted), or dropped "
            "(it was already there).",
            ["outcome"],
            registry=self.registry,
        )
        self.watch_cut_off = Counter(
            "potok_watch_cut_off_total",
            "Watch streams ended by the service: too_slow (held WATCH_MAX_BUFFER_BYTES unsent, "
            "stopped reading, or held most when WATCH_MEMORY_BUDGET was reached), "
            "revision_too_old, revision_unknown (resumed from a revision not kept or never "
            "known), shutdown.",
            ["reason"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "potok_auth_failures_total",
            "Requests refused for their key: missing_key, unknown_key, unknown_session (a console "
            "session ended or unknown), console_sign_in (a console sign-in with an unknown key).",
            ["reason"],
            registry=self.registry,
        )
        self.forbidden = Counter(
            "potok_auth_forbidden_total",
            "Requests refused 403 because the key lacks a scope, by key name and scope.",
            ["key", "scope"],
            registry=self.registry,
        )
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._transition_children: dict[tuple[str, str, str], Counter] = {}
        self._labelled_entities: frozenset[str] = frozenset()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request. `route` is the route template, never the raw
        path, so the label set stays bounded. Children are cached: `labels()`
        costs a lock and a dict lookup per call, this costs one dict lookup."""
        if method not in KNOWN_METHODS:
            method = "OTHER"
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
            self._http_children[key] = children
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)

    def label_entities(self, entities: Iterable[str]) -> None:
        """Types whose transitions are counted under their own names (the
        configured tables); any other is counted as `other`, so a client cannot
        grow /metrics by inventing types or statuses."""
        self._labelled_entities = frozenset(entities)

    def count_transition(self, entity: str, event: str, status: str) -> None:
        if entity not in self._labelled_entities:
            entity = status = OTHER
        key = (entity, event, status)
        child = self._transition_children.get(key)
        if child is None:
            child = self.transitions.labels(entity, event, status)
            self._transition_children[key] = child
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Metrics"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process: requests by route, transitions, deliveries, cache
    lookups, watch streams, leases."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
