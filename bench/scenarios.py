"""What is measured: each path is one `Scenario` entry, grouped by the server
configuration it needs. Adding a path (say, history paging) is one entry here
and, if it needs a new request shape, one case in `load.build_request`.

Webhook delivery is not a request loop against one server (it needs a receiver,
a worker process, and a backlog), so it has its own `DeliveryScenario` entries,
run by `bench/webhooks.py`."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.load import RequestKind

BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Goal:
    """A DESIGN.md §9 goal: a share of the ceiling's req/s, or a p50 latency bound."""

    text: str
    min_ratio: float | None = None
    max_p50_ms: float | None = None
    max_p99_ms: float | None = None
    backends: tuple[str, ...] = BACKENDS

    def applies_to(self, backend: str) -> bool:
        return backend in self.backends


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: RequestKind
    goal: Goal | None = None
    sequential: bool = False
    """One request at a time, a fixed count of them (heavy requests: batches)."""
    ceiling: bool = False
    """The trivial JSON endpoint; the other rows' req/s are ratios to it."""


@dataclass(frozen=True)
class ServerProfile:
    """One server configuration, started once per backend, with its own ceiling."""

    key: str
    title: str
    scenarios: tuple[Scenario, ...]
    needs_redis: bool = False
    settings: dict[str, str] = field(default_factory=dict)


def _ceiling(key: str) -> Scenario:
    when = "end" if key.endswith("end") else "start"
    return Scenario(
        key,
        f"ceiling: GET /health/liveness ({when})",
        RequestKind.LIVENESS,
        ceiling=True,
    )


PLAIN = ServerProfile(
    key="plain",
    title="no cache (Redis disabled)",
    scenarios=(
        _ceiling("ceiling"),
        Scenario(
            "get",
            "GET one state, uncached",
            RequestKind.GET_STATE,
            Goal("≥ 0.4 × ceiling", min_ratio=0.4),
        ),
        Scenario("list", "GET list ?status=…&limit=50, uncached", RequestKind.LIST_STATES),
        Scenario(
            "put",
            "PUT transition",
            RequestKind.PUT,
            Goal("≥ 0.3 × ceiling", min_ratio=0.3),
        ),
        Scenario("create", "POST create (new entityId)", RequestKind.CREATE),
        Scenario(
            "batch_create",
            "atomic batch, 1000 new items",
            RequestKind.BATCH_CREATE,
            Goal("≤ 150 ms (SQLite)", max_p50_ms=150, backends=("sqlite",)),
            sequential=True,
        ),
        Scenario(
            "batch_update",
            "atomic batch, 1000 transitions",
            RequestKind.BATCH_UPDATE,
            Goal("≤ 150 ms (SQLite)", max_p50_ms=150, backends=("sqlite",)),
            sequential=True,
        ),
        _ceiling("ceiling_end"),
    ),
)

CACHED = ServerProfile(
    key="cached",
    title="local Redis tier (private redis-server)",
    needs_redis=True,
    settings={"REDIS_LOCAL_ENABLED": "true", "REDIS_LOCAL_HOST": "127.0.0.1"},
    scenarios=(
        _ceiling("cached_ceiling"),
        Scenario(
            "get_cached",
            "GET one state, cached",
            RequestKind.GET_STATE,
            Goal("≥ 0.6 × ceiling", min_ratio=0.6),
        ),
        Scenario("list_cached", "GET list ?status=…&limit=50, cached", RequestKind.LIST_STATES),
        _ceiling("cached_ceiling_end"),
    ),
)

PROFILES = (PLAIN, CACHED)


@dataclass(frozen=True)
class DeliveryScenario:
    """A webhook delivery figure (DESIGN.md §9), measured by `bench/webhooks.py`."""

    key: str
    title: str
    goal: Goal | None = None
    subscriptions: int = 1
    """Subscriptions to the receiver; throughput scenarios share the backlog
    among them so the deliveries to make stay the same."""
    latency: bool = False
    """Change → first attempt at a fixed write rate; otherwise: drain a backlog."""


_DELIVERY_RATE_GOAL = Goal("≥ 0.5 × raw POST rate", min_ratio=0.5)

DELIVERY_SCENARIOS = (
    DeliveryScenario(
        "delivery_latency",
        "change → first delivery attempt",
        Goal("p99 ≤ 100 ms (PostgreSQL)", max_p99_ms=100, backends=("postgresql",)),
        latency=True,
    ),
    DeliveryScenario(
        "deliveries",
        "deliveries/s, one worker, 1 subscription",
        _DELIVERY_RATE_GOAL,
    ),
    DeliveryScenario(
        "deliveries_fanout",
        "deliveries/s, one worker, 8 subscriptions",
        _DELIVERY_RATE_GOAL,
        subscriptions=8,
    ),
)
