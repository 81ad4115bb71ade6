"""Application wiring: settings in, a FastAPI app out. No behaviour lives here."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import structlog
from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware

from potok_state.cache import TieredCache
from potok_state.cache.floors import RevisionFloors
from potok_state.cache.near import NearCache, NearCacheFollower
from potok_state.clock import utc_now
from potok_state.console.api import install_console
from potok_state.console.pages import ConsolePages
from potok_state.console.sessions import ConsoleSessions
from potok_state.events.api import router as events_router
from potok_state.events.retention import Pruner
from potok_state.events.service import ChangeFeed, EventPublisher
from potok_state.external.client import AdminServiceClient, OnOutcome
from potok_state.external.rebuild import Rebuilt, rebuild_journal
from potok_state.external.replicator import ExternalMetrics, Replicator
from potok_state.health.api import router as health_router
from potok_state.health.service import HealthService
from potok_state.kit import docs
from potok_state.kit.auth import ApiKeyRing
from potok_state.kit.body_limit import RequestBodyLimitMiddleware
from potok_state.kit.errors import install_error_handlers
from potok_state.kit.request_context import RequestContextMiddleware
from potok_state.kit.security_headers import SecurityHeadersMiddleware
from potok_state.kit.server import settle_heap
from potok_state.kit.shutdown import on_exit_signal
from potok_state.kit.throttle import Throttle
from potok_state.leases.api import router as leases_router
from potok_state.leases.reaper import LeaseReaper
from potok_state.logging import configure_logging
from potok_state.metrics import Metrics
from potok_state.metrics import router as metrics_router
from potok_state.settings import AppEnv, ExternalDbSettings, Settings, StorageBackend
from potok_state.states.api import router as states_router
from potok_state.states.machine_api import router as machines_router
from potok_state.states.machine_service import MachineService
from potok_state.states.machines import load_machines
from potok_state.states.service import StateService
from potok_state.storage.migrate import head_revision, schema_revision, upgrade_to_head
from potok_state.storage.sql import SqlStateStore
from potok_state.stream.position import read_backlog
from potok_state.stream.position import report as stream_report
from potok_state.stream.publisher import StreamMetrics, StreamPublisher
from potok_state.watch.api import router as watch_router
from potok_state.watch.hub import WatchHub
from potok_state.webhooks.api import router as webhooks_router
from potok_state.webhooks.delivery import DeliveryWorker
from potok_state.webhooks.notices import SubscriptionNotices
from potok_state.webhooks.repository.subscriptions import SubscriptionRepository
from potok_state.webhooks.sealing import SecretSeal
from potok_state.webhooks.service import WebhookService

log = structlog.get_logger(__name__)

VERSION = version("potok-state")
# How often the watch hub looks for changes it was not told of: on SQLite,
# other processes' commits on the same file; on PostgreSQL a safety net under
# LISTEN/NOTIFY.
WATCH_POLL_SECONDS = {"sqlite": 0.1, "postgresql": 1.0}
GZIP_MINIMUM_BYTES = 1024
# Set by `serve --workers N` for its worker processes: the file holding the
# revision floors they share (cache/floors.py).
SHARED_FLOORS_ENV = "POTOK_SHARED_FLOORS"


class SchemaNotCurrent(RuntimeError):
    pass


async def prepare_schema(store: SqlStateStore) -> None:
    """An embedded SQLite file is migrated in place; a server database must be
    migrated on purpose (`potok-state migrate`) and is only checked here."""
    if store.is_sqlite:
        await asyncio.to_thread(upgrade_to_head, store.url)
        return
    current, head = await schema_revision(store.db), head_revision()
    if current != head:
        raise SchemaNotCurrent(
            f"the database schema is at revision {current}, this release needs {head}: "
            "run `potok-state migrate` first"
        )


async def check_startup(settings: Settings) -> None:
    """What would keep the service from starting, found before the server
    starts (the command line prints it as one line, not a server traceback):
    SchemaNotCurrent, or SecretKeyMismatch after a changed WEBHOOK_SECRET_KEY.
    An embedded SQLite file is migrated here, once for every worker process."""
    store = SqlStateStore(settings.database_url, pool_size=1)
    try:
        await prepare_schema(store)
        await SubscriptionRepository(store, create_secret_seal(settings)).seal_stored_secrets()
    finally:
        await store.close()


def create_delivery_worker(
    settings: Settings,
    store: SqlStateStore,
    seal: SecretSeal,
    metrics: Metrics,
    notices: SubscriptionNotices | None = None,
) -> DeliveryWorker:
    return DeliveryWorker(
        store,
        seal,
        settings.webhooks,
        metrics,
        allow_private=settings.webhooks_allow_private_targets,
        concurrency=settings.webhooks.worker_concurrency,
        per_subscription=settings.webhooks.max_in_flight_per_subscription,
        notices=notices,
    )


def create_secret_seal(settings: Settings) -> SecretSeal:
    previous = settings.webhooks.previous_secret_key
    return SecretSeal(
        settings.webhooks.secret_key.get_secret_value(),
        previous.get_secret_value() if previous else None,
    )


def create_event_publisher(settings: Settings, store: SqlStateStore) -> EventPublisher:
    return EventPublisher(
        store,
        data_max_bytes=settings.metadata_max_bytes,
        idempotency_ttl=settings.idempotency_ttl,
    )


def create_admin_client(
    external: ExternalDbSettings, on_outcome: OnOutcome | None = None
) -> AdminServiceClient:
    assert external.url is not None  # the settings refuse STORAGE_BACKEND=external without it
    return AdminServiceClient(
        external.url,
        external.api_key.get_secret_value() if external.api_key else "",
        timeout_ms=external.connection_timeout,
        retries=external.retry_attempts,
        on_outcome=on_outcome,
    )


def create_replicator(settings: Settings, store: SqlStateStore, metrics: Metrics) -> Replicator:
    """The external backend (docs/external.md): the SQL store is the journal,
    drained into the Admin Service."""
    external = settings.external_db
    counts = ExternalMetrics(metrics.registry)
    admin = create_admin_client(external, lambda outcome: counts.requests.labels(outcome).inc())
    return Replicator(
        store,
        admin,
        states_collection=external.states_collection,
        history_collection=external.history_collection,
        max_backlog=external.max_backlog,
        metrics=counts,
    )


def create_stream_publisher(
    settings: Settings, store: SqlStateStore, metrics: Metrics
) -> StreamPublisher | None:
    """The event stream (docs/stream.md): every `serve` process is a candidate,
    the one holding the lease publishes."""
    if not settings.nats.enabled:
        return None
    return StreamPublisher(
        store,
        settings.nats,
        StreamMetrics(metrics.registry),
        # On SQLite other processes' commits are not heard: look as often as watch does.
        poll_seconds=WATCH_POLL_SECONDS["sqlite" if settings.is_sqlite else "postgresql"],
    )


async def stream_position(settings: Settings) -> dict[str, object]:
    """`potok-state stream`: the publisher's position and lease, from the database."""
    store = SqlStateStore(settings.database_url, pool_size=1)
    try:
        await prepare_schema(store)
        backlog = await store.db.read(read_backlog)
    finally:
        await store.close()
    return {
        "enabled": settings.nats.enabled,
        "stream": settings.nats.stream,
        "subjectPrefix": settings.nats.subject_prefix,
        **stream_report(backlog, utc_now()),
    }


async def rebuild_external_journal(settings: Settings) -> Rebuilt:
    """`potok-state rebuild-journal`: an empty journal filled from the Admin
    Service (docs/external.md, "When the journal is lost")."""
    store = SqlStateStore(settings.database_url, pool_size=2)
    try:
        await prepare_schema(store)
        admin = create_admin_client(settings.external_db)
        try:
            return await rebuild_journal(
                store,
                admin,
                states_collection=settings.external_db.states_collection,
                history_collection=settings.external_db.history_collection,
            )
        finally:
            await admin.close()
    finally:
        await store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    for note in settings.unused_settings():
        log.warning("config.unused", note=note)
    for note in settings.example_values():
        log.warning("config.example_value", note=note)
    machines = load_machines(settings.state_machines_file, strict=settings.state_machines_strict)
    floors = RevisionFloors(shared_path=os.environ.get(SHARED_FLOORS_ENV))
    store = SqlStateStore(
        settings.database_url,
        pool_size=settings.database_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous.value,
        commit_hook=floors.committed,
    )
    metrics = Metrics()
    metrics.label_entities(machine.entity for machine in machines.all())
    replicator = (
        create_replicator(settings, store, metrics)
        if settings.storage_backend is StorageBackend.EXTERNAL
        else None
    )
    if replicator is not None:
        store.admission = replicator.admit
    near = NearCache(floors, size=settings.cache.near_size)
    if near.size and store.commits.follows_others:
        store.commits.follow(NearCacheFollower(near), store.changes, store.head_revision)
    cache = TieredCache.from_settings(settings, metrics, floors)
    throttle = Throttle.from_settings(settings.throttle, settings.redis_global)
    seal = create_secret_seal(settings)
    event_publisher = create_event_publisher(settings, store)
    subscription_notices = SubscriptionNotices(event_publisher, metrics)
    webhook_service = WebhookService(
        store,
        seal,
        settings.webhooks,
        allow_private=settings.webhooks_allow_private_targets,
        idempotency_ttl=settings.idempotency_ttl,
        notices=subscription_notices,
    )
    worker = (
        create_delivery_worker(settings, store, seal, metrics, subscription_notices)
        if settings.webhooks.embedded_worker
        else None
    )

    state_service = StateService(
        store,
        machines,
        metadata_max_bytes=settings.metadata_max_bytes,
        idempotency_ttl=settings.idempotency_ttl,
        floors=floors,
        near=near,
        cache=cache,
        metrics=metrics,
    )
    machine_service = MachineService(
        store,
        machines,
        metrics,
        schema_max_bytes=settings.metadata_max_bytes,
        idempotency_ttl=settings.idempotency_ttl,
    )
    reaper = LeaseReaper(store, state_service)
    stream_publisher = create_stream_publisher(settings, store, metrics)
    pruner = Pruner(
        store,
        settings.retention,
        idempotency_ttl=settings.idempotency_ttl,
        keep_unpublished=stream_publisher is not None,
    )
    watch_hub = WatchHub(
        store,
        store.commits.outbox_wakeup(),
        metrics,
        max_clients=settings.watch.max_clients,
        max_buffer_bytes=settings.watch.max_buffer_bytes,
        memory_budget=settings.watch.memory_budget,
        heartbeat_seconds=settings.watch.heartbeat / 1000,
        poll_seconds=WATCH_POLL_SECONDS["sqlite" if settings.is_sqlite else "postgresql"],
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A start that fails (SchemaNotCurrent, SecretKeyMismatch, a tier down)
        # releases what it opened too: every stop below is safe before its start.
        try:
            await prepare_schema(store)
            await webhook_service.subscriptions.seal_stored_secrets()
            await store.commits.start()
            await machine_service.start()
            if replicator is not None:
                await replicator.start()
            if stream_publisher is not None:
                await stream_publisher.start()
            on_exit_signal(watch_hub.close)
            if cache is not None:
                await cache.start()
            if worker is not None:
                await worker.start()
            await reaper.start()
            await pruner.start()
            log.info("service.started", app=settings.app_name, env=settings.app_env.value)
            yield
        finally:
            watch_hub.close()
            await pruner.stop()
            await reaper.stop()
            if worker is not None:
                await worker.stop()
            await webhook_service.close()
            if stream_publisher is not None:
                await stream_publisher.stop()
            if replicator is not None:
                await replicator.stop()
            await machine_service.stop()
            await throttle.close()
            if cache is not None:
                await cache.close()
            await store.close()
            floors.close()
            log.info("service.stopped")

    app = FastAPI(
        title="Potok State Service",
        version=VERSION,
        description="Record and read entity states with validated transitions, "
        "full history, webhooks and a change feed.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=docs.OPENAPI_PATH,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = ApiKeyRing(settings.parsed_api_keys)
    app.state.throttle = throttle
    app.state.store = store
    app.state.state_service = state_service
    app.state.machine_service = machine_service
    app.state.change_feed = ChangeFeed(store)
    app.state.watch_hub = watch_hub
    app.state.event_publisher = event_publisher
    app.state.webhook_service = webhook_service
    app.state.delivery_worker = worker
    app.state.cache = cache
    app.state.health_service = HealthService(
        store, version=VERSION, cache=cache, external=replicator, stream=stream_publisher
    )

    install_error_handlers(app)
    # Outermost last: headers and the request id reach every response, 413s included.
    app.add_middleware(
        RequestBodyLimitMiddleware,
        max_bytes=settings.request_body_max_bytes,
        timeout_seconds=settings.request_body_timeout / 1000,
    )
    # The repetitive JSON of a page compresses as well at level 1 as at 6, for less CPU.
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=1)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    app.include_router(metrics_router)
    app.include_router(health_router)
    # Before the states routes: `/states/{entity}/watch` would otherwise be read
    # as the state whose id is "watch" (an id the service refuses to create).
    app.include_router(watch_router)
    app.include_router(leases_router)
    app.include_router(states_router)
    app.include_router(machines_router)
    app.include_router(events_router)
    app.include_router(webhooks_router)
    if settings.console.enabled:
        install_console(
            app,
            ConsoleSessions(store.db, app.state.api_keys, ttl_seconds=settings.console.session_ttl),
            ConsolePages(state_service, machine_service, webhook_service, app.state.change_feed),
            secure_cookie=settings.app_env is not AppEnv.DEVELOPMENT,
        )
    docs.install_api_docs(app)
    return app


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` (each process of `serve --workers N`):
    settings from the environment and `.env`; the heap settled before serving."""
    app = create_app(Settings())
    settle_heap()
    return app


async def run_worker(settings: Settings) -> None:
    """`potok-state worker`: delivery only, until SIGTERM or SIGINT; in-flight
    attempts finish before it exits."""
    configure_logging(settings.log_level, settings.log_format)
    store = SqlStateStore(
        settings.database_url,
        pool_size=settings.database_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous.value,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await prepare_schema(store)
        seal = create_secret_seal(settings)
        await SubscriptionRepository(store, seal).seal_stored_secrets()
        await store.commits.start()
        metrics = Metrics()
        notices = SubscriptionNotices(create_event_publisher(settings, store), metrics)
        worker = create_delivery_worker(settings, store, seal, metrics, notices)
        settle_heap()
        await worker.run_until(stop)
    finally:
        await store.close()
