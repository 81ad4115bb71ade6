"""The NATS connection and the JetStream stream, as NATS_* configures them
(docs/stream.md, "Turning it on")."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import structlog
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from potok_state.settings import NatsSettings

log = structlog.get_logger("potok_state.stream")

CONNECT_SECONDS = 5.0
RECONNECT_WAIT_SECONDS = 0.5
# Publishes in flight on one connection before `publish_async` waits.
MAX_PENDING_PUBLISHES = 4_000


def servers(settings: NatsSettings) -> list[str]:
    assert settings.url is not None
    return [url.strip() for url in settings.url.split(",") if url.strip()]


def connect_options(settings: NatsSettings) -> dict[str, Any]:
    """nats-py's `connect` keywords for the configured servers, credentials and TLS."""
    options: dict[str, Any] = {"servers": servers(settings), "name": "potok-state"}
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password.get_secret_value() if settings.password else ""
    if settings.token:
        options["token"] = settings.token.get_secret_value()
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    if settings.nkey_seed_file:
        options["nkeys_seed"] = settings.nkey_seed_file
    if settings.tls_ca_file or settings.tls_cert_file:
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        if settings.tls_cert_file:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        options["tls"] = context
    return options


async def connect(settings: NatsSettings) -> Nats:
    """A connection that reconnects by itself once it is up; the first attempt
    gives up after CONNECT_SECONDS (the caller tries again later)."""
    client = Nats()

    async def on_error(exc: Exception) -> None:
        log.warning("stream.nats_error", error=f"{type(exc).__name__}: {exc}"[:300])

    async def on_disconnected() -> None:
        if not client.is_closed:  # not the publisher closing it
            log.warning("stream.nats_disconnected")

    async def on_reconnected() -> None:
        log.info("stream.nats_reconnected", server=str(client.connected_url or ""))

    try:
        async with asyncio.timeout(CONNECT_SECONDS):
            await client.connect(
                **connect_options(settings),
                connect_timeout=2,
                reconnect_time_wait=RECONNECT_WAIT_SECONDS,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
    except BaseException:
        with contextlib.suppress(Exception):
            await client.close()
        raise
    return client


def jetstream(client: Nats, settings: NatsSettings) -> JetStreamContext:
    return client.jetstream(
        timeout=settings.publish_timeout / 1000,
        publish_async_max_pending=MAX_PENDING_PUBLISHES,
    )


async def ensure_stream(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create the stream when it is missing; an existing one is used as it is
    (its subjects must include `{prefix}.>`, which the publisher's first
    publish checks: a subject no stream takes gets no answer)."""
    try:
        await js.stream_info(settings.stream)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        StreamConfig(
            name=settings.stream,
            description="Potok State Service events (docs/stream.md)",
            subjects=[f"{settings.subject_prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
            duplicate_window=settings.duplicate_window / 1000,
        )
    )
    log.info("stream.created", stream=settings.stream, subjects=f"{settings.subject_prefix}.>")
