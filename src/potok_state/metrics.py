"""Prometheus metrics. One `Metrics` per app (its own registry), handed to the
features that count things; `/metrics` renders it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.outbox_lag = Gauge(
            "potok_outbox_lag_revisions",
            "Revisions written but not yet dispatched to webhook deliveries.",
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "potok_cache_requests_total",
            "Cache lookups by tier (local, global) and result (hit, miss, error).",
            ["tier", "result"],
            registry=self.registry,
        )
        self.watch_clients = Gauge(
            "potok_watch_clients",
            "Connected watch (SSE) clients.",
            registry=self.registry,
        )
