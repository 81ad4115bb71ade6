"""What is measured: each path is one `Scenario` entry, grouped by the server
configuration it needs (a `ServerProfile`). Adding a path (say, history paging)
is one entry here and, if it needs a new request shape, one case in
`load.build_request`. Every profile runs once per `--workers` count (`serve
--workers N`), with its own ceiling; rows marked `one_worker_only` run only
with one worker.

Webhook delivery is not a request loop against one server (it needs a receiver,
a worker process, and a backlog), so it has its own `DeliveryScenario` entries,
run by `bench/webhooks.py`; likewise watch streams (a process holding the
streams, a writer), `WatchScenario` entries run by `bench/watch.py`; and lease lapses (a
receiver, thousands of deadlines at once), `LeaseScenario` entries run by
`bench/leases.py`. Heartbeats are an ordinary request row (`heartbeat`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.load import RequestKind

BACKENDS = ("sqlite", "postgresql")
BACKEND_TITLES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@dataclass(frozen=True)
class Goal:
    """A bench/README.md goal: a share of the ceiling's req/s, or a latency bound.
    A goal for one backend only says so in its `text`."""

    text: str
    min_ratio: float | None = None
    max_p50_ms: float | None = None
    max_p99_ms: float | None = None
    max_ms: float | None = None
    """A bound on the worst of a distribution (lease lapses: the latest one)."""
    max_us: float | None = None
    """A bound on a cost per unit of work, µs of server CPU."""
    max_mb: float | None = None
    """A bound on memory the server gains, MiB."""
    not_below_one_worker: bool = False
    """With N > 1 workers, also ≥ the same row's ratio with one worker (same run)."""
    backends: tuple[str, ...] = BACKENDS
    relative_to: str | None = None
    """`min_ratio` is a share of this row's req/s (same server), not of the ceiling's."""

    def applies_to(self, backend: str) -> bool:
        return backend in self.backends


def goal_for(goals: tuple[Goal, ...], backend: str) -> Goal | None:
    """The goal of a row on `backend` (a row may have one goal per backend)."""
    return next((goal for goal in goals if goal.applies_to(backend)), None)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: RequestKind
    goals: tuple[Goal, ...] = ()
    sequential: bool = False
    """One request at a time, a fixed count of them (heavy requests: batches)."""
    ceiling: bool = False
    """The trivial JSON endpoint; the other rows' req/s are ratios to it."""
    one_worker_only: bool = False
    """Skipped when the server runs `--workers N` with N > 1."""

    def goal_for(self, backend: str) -> Goal | None:
        return goal_for(self.goals, backend)


@dataclass(frozen=True)
class ServerProfile:
    """One server configuration, started once per backend and worker count, with
    its own ceiling."""

    key: str
    title: str
    scenarios: tuple[Scenario, ...]
    needs_redis: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    """On top of `server.service_env` (Redis tiers off, near cache at its default)."""
    needs_admin_service: bool = False
    """STORAGE_BACKEND=external against a reference Admin Service the runner starts
    (its URL and key are added by the runner)."""


def _ceiling(profile: str, when: str) -> Scenario:
    key = "ceiling" if profile == "plain" else f"{profile}_ceiling"
    return Scenario(
        key if when == "start" else f"{key}_end",
        f"ceiling: GET /health/liveness ({when})",
        RequestKind.LIVENESS,
        ceiling=True,
    )


_NEAR_CACHE_OFF = {"CACHE_NEAR_SIZE": "0"}
_LOCAL_REDIS = {"REDIS_LOCAL_ENABLED": "true", "REDIS_LOCAL_HOST": "127.0.0.1"}
"""The private redis-server's port is added by the runner."""

_BATCH_GOAL = Goal("≤ 100 ms p50", max_p50_ms=100)

PLAIN = ServerProfile(
    key="plain",
    title="no cache (Redis off, near cache off)",
    settings=_NEAR_CACHE_OFF,
    scenarios=(
        _ceiling("plain", "start"),
        Scenario(
            "get",
            "GET one state, no cache",
            RequestKind.GET_STATE,
            (
                Goal("≥ 0.5 × ceiling (SQLite)", min_ratio=0.5, backends=("sqlite",)),
                Goal("≥ 0.4 × ceiling (PostgreSQL)", min_ratio=0.4, backends=("postgresql",)),
            ),
        ),
        Scenario(
            "list",
            "GET list ?status=…&limit=50, uncached",
            RequestKind.LIST_STATES,
            (
                Goal(
                    "≥ 0.3 × ceiling (SQLite); N workers: ≥ the 1-worker ratio",
                    min_ratio=0.3,
                    not_below_one_worker=True,
                    backends=("sqlite",),
                ),
                Goal(
                    "≥ 0.25 × ceiling (PostgreSQL); N workers: ≥ the 1-worker ratio",
                    min_ratio=0.25,
                    not_below_one_worker=True,
                    backends=("postgresql",),
                ),
            ),
        ),
        Scenario(
            "put",
            "PUT transition",
            RequestKind.PUT,
            (Goal("≥ 0.3 × ceiling", min_ratio=0.3),),
        ),
        Scenario(
            "create",
            "POST create (new entityId)",
            RequestKind.CREATE,
            (Goal("≥ 0.3 × ceiling", min_ratio=0.3),),
        ),
        Scenario(
            "heartbeat",
            "POST heartbeat (lease renewal)",
            RequestKind.HEARTBEAT,
            (Goal("≥ 0.5 × ceiling", min_ratio=0.5),),
            one_worker_only=True,
        ),
        Scenario(
            "batch_create",
            "atomic batch, 1000 new items",
            RequestKind.BATCH_CREATE,
            (_BATCH_GOAL,),
            sequential=True,
            one_worker_only=True,
        ),
        Scenario(
            "batch_update",
            "atomic batch, 1000 transitions",
            RequestKind.BATCH_UPDATE,
            (_BATCH_GOAL,),
            sequential=True,
            one_worker_only=True,
        ),
        Scenario(
            "put_defined",
            "PUT transition, type defined over the API, 10-key metadata",
            RequestKind.PUT_DEFINED,
        ),
        Scenario(
            "put_schema",
            "PUT transition, the same type with a 10-property metadataSchema",
            RequestKind.PUT_SCHEMA,
            (Goal("≥ 0.9 × PUT without schema", min_ratio=0.9, relative_to="put_defined"),),
        ),
        Scenario(
            "as_of_revision",
            "GET ?asOf=<revision>, an entity with 10,000 changes",
            RequestKind.AS_OF_REVISION,
        ),
        Scenario(
            "as_of_time",
            "GET ?asOf=<time>, an entity with 10,000 changes",
            RequestKind.AS_OF_TIME,
        ),
        _ceiling("plain", "end"),
    ),
)

CACHED = ServerProfile(
    key="cached",
    title="near cache + local Redis tier (private redis-server)",
    needs_redis=True,
    settings=_LOCAL_REDIS,
    scenarios=(
        _ceiling("cached", "start"),
        Scenario(
            "get_cached",
            "GET one state, cache hit (near cache)",
            RequestKind.GET_STATE,
            (Goal("≥ 0.7 × ceiling", min_ratio=0.7),),
        ),
        Scenario(
            "list_cached",
            "GET list ?status=…&limit=50, cached (local Redis)",
            RequestKind.LIST_STATES,
        ),
        _ceiling("cached", "end"),
    ),
)

REDIS_ONLY = ServerProfile(
    key="redis",
    title="Redis hit, near cache off (informational, no §9 goal)",
    needs_redis=True,
    settings={**_NEAR_CACHE_OFF, **_LOCAL_REDIS},
    scenarios=(
        _ceiling("redis", "start"),
        Scenario(
            "get_redis",
            "GET one state, Redis hit (near cache off)",
            RequestKind.GET_STATE,
        ),
        Scenario(
            "list_redis",
            "GET list ?status=…&limit=50, cached (local Redis)",
            RequestKind.LIST_STATES,
        ),
        _ceiling("redis", "end"),
    ),
)

EXTERNAL = ServerProfile(
    key="external",
    title="external backend: journal + reference Admin Service, no cache (informational)",
    needs_admin_service=True,
    settings={**_NEAR_CACHE_OFF, "STORAGE_BACKEND": "external"},
    scenarios=(
        _ceiling("external", "start"),
        Scenario("get_external", "GET one state, no cache (external)", RequestKind.GET_STATE),
        Scenario("put_external", "PUT transition (external)", RequestKind.PUT),
        Scenario("create_external", "POST create (external)", RequestKind.CREATE),
        _ceiling("external", "end"),
    ),
)

PROFILES = (PLAIN, CACHED, REDIS_ONLY, EXTERNAL)


def workers_label(workers: int) -> str:
    return "1 worker" if workers == 1 else f"{workers} workers"


def section_label(backend: str, workers: int, profile: ServerProfile) -> str:
    """The report's heading of one (backend, workers, profile) section."""
    return f"{BACKEND_TITLES.get(backend, backend)} — {workers_label(workers)} — {profile.title}"


@dataclass(frozen=True)
class DeliveryScenario:
    """A webhook delivery figure (bench/README.md), measured by `bench/webhooks.py`
    (always against one-worker servers and one delivery worker)."""

    key: str
    title: str
    goals: tuple[Goal, ...] = ()
    subscriptions: int = 1
    """Subscriptions to the receiver; throughput scenarios share the backlog
    among them so the deliveries to make stay the same."""
    latency: bool = False
    """Change → first attempt at a fixed write rate; otherwise: drain a backlog."""

    def goal_for(self, backend: str) -> Goal | None:
        return goal_for(self.goals, backend)


_DELIVERY_RATE_GOAL = Goal("≥ 0.5 × raw POST rate", min_ratio=0.5)

DELIVERY_SCENARIOS = (
    DeliveryScenario(
        "delivery_latency",
        "change → first delivery attempt",
        (Goal("p99 ≤ 100 ms (PostgreSQL)", max_p99_ms=100, backends=("postgresql",)),),
        latency=True,
    ),
    DeliveryScenario(
        "deliveries",
        "deliveries/s, one worker, 1 subscription",
        (_DELIVERY_RATE_GOAL,),
    ),
    DeliveryScenario(
        "deliveries_fanout",
        "deliveries/s, one worker, 8 subscriptions",
        (_DELIVERY_RATE_GOAL,),
        subscriptions=8,
    ),
)


@dataclass(frozen=True)
class WatchScenario:
    """A watch stream figure (bench/README.md), measured by `bench/watch.py`
    against one one-worker server with `--watchers` streams open."""

    key: str
    title: str
    goals: tuple[Goal, ...] = ()

    def goal_for(self, backend: str) -> Goal | None:
        return goal_for(self.goals, backend)


WATCH_GROUP = "watch"
"""`--only watch` selects every watch scenario."""

WATCH_SCENARIOS = (
    WatchScenario(
        "watch_latency",
        "change → event at every watcher, steady write rate",
        (Goal("p99 ≤ 100 ms", max_p99_ms=100),),
    ),
    WatchScenario(
        "watch_cpu",
        "server CPU per (event, watcher), unfiltered watchers, steady write rate",
        (Goal("≤ 1.5 µs per (event, watcher)", max_us=1.5),),
    ),
    WatchScenario(
        "watch_writes",
        "PUT writes/s with every (unfiltered) watcher connected vs none",
    ),
    WatchScenario(
        "watch_filtered",
        "PUT writes/s with every watcher filtered to its own entity vs none",
        (Goal("≥ 0.9 × without watchers", min_ratio=0.9),),
    ),
    WatchScenario(
        "watch_hostile",
        "server memory with 10 watchers that never read a 90 MB backlog",
        (Goal("RSS growth < 300 MB", max_mb=300),),
    ),
)


@dataclass(frozen=True)
class LeaseScenario:
    """A lease lapse figure (bench/README.md), measured by `bench/leases.py`
    against one one-worker server (its embedded webhook worker delivering)."""

    key: str
    title: str
    setup: str
    """How the deadlines are set: `heartbeat` (the states exist, their creation
    events delivered; one round of batch heartbeats with the short ttl) or
    `create` (atomic batches of new states with the short ttl, all at once)."""
    goals: tuple[Goal, ...] = ()

    def goal_for(self, backend: str) -> Goal | None:
        return goal_for(self.goals, backend)


LEASE_GROUP = "leases"
"""`--only leases` selects the heartbeat row and every lapse scenario."""

HEARTBEAT_KEY = "heartbeat"

_LAPSE_GOAL = Goal("max ≤ 2 s late, all lapsed once, all delivered", max_ms=2000)

LEASE_SCENARIOS = (
    LeaseScenario(
        "lease_lapse",
        "deadlines set by batch heartbeats",
        setup="heartbeat",
        goals=(_LAPSE_GOAL,),
    ),
    LeaseScenario(
        "lease_lapse_create",
        "deadlines set by creation (created events in flight)",
        setup="create",
        goals=(_LAPSE_GOAL,),
    ),
)


@dataclass(frozen=True)
class ScaleScenario:
    """A row of the large-store section (bench/README.md), run by
    `bench/scale.py` on a store of 1,000 states and again on one of
    `--scale-states`; its goal compares the two (or bounds the large one)."""

    key: str
    title: str
    kind: RequestKind
    sequential: bool = False
    """One request at a time (a latency, not a rate)."""
    min_of_small: float | None = None
    """× ceiling on the large store ≥ this share of × ceiling on the small one."""
    max_p50_of_small: float | None = None
    """p50 on the large store ≤ this multiple of p50 on the small one."""
    max_p50_ms: float | None = None
    """p50 on the large store ≤ this, ms."""
    goal: str = ""


SCALE_KEY = "scale"
"""`--only scale` selects the large-store section (a full run has it, `--quick` not)."""
SCALE_MIGRATE_START_GOAL = Goal("migrate + start ≤ 10 s", max_ms=10_000)

SCALE_SCENARIOS = (
    ScaleScenario("ceiling", "ceiling: GET /health/liveness (start)", RequestKind.LIVENESS),
    ScaleScenario(
        "get",
        "GET one state, no cache",
        RequestKind.GET_STATE,
        min_of_small=0.9,
        goal="× ceiling ≥ 0.9 × its 1,000-state ratio",
    ),
    ScaleScenario(
        "put",
        "PUT transition",
        RequestKind.PUT,
        min_of_small=0.9,
        goal="× ceiling ≥ 0.9 × its 1,000-state ratio",
    ),
    ScaleScenario(
        "create",
        "POST create (new entityId)",
        RequestKind.CREATE,
        min_of_small=0.9,
        goal="× ceiling ≥ 0.9 × its 1,000-state ratio",
    ),
    ScaleScenario(
        "list",
        "GET list ?status=…&limit=50, one at a time",
        RequestKind.LIST_STATES,
        sequential=True,
        max_p50_of_small=2.0,
        goal="p50 ≤ 2 × its 1,000-state p50",
    ),
    ScaleScenario(
        "history",
        "GET history of a 10,000-change entity, 100 a page, one at a time",
        RequestKind.HISTORY_PAGE,
        sequential=True,
        max_p50_ms=10.0,
        goal="p50 ≤ 10 ms",
    ),
    ScaleScenario("ceiling_end", "ceiling: GET /health/liveness (end)", RequestKind.LIVENESS),
)
