"""Retention never deletes an outbox event the stream does not have yet
(docs/stream.md, "While NATS is down")."""

from __future__ import annotations

from potok_state.events.retention import Pruner
from potok_state.settings import RetentionSettings
from potok_state.storage.sql import SqlStateStore
from tests.stream.test_publishing import record_user, stream_settings, wait_for_messages
from tests.support.apps import api_client, running_app
from tests.support.nats_server import NatsServer
from tests.support.polling import eventually

PRUNE_AT_ONCE = RetentionSettings(deliveries_ttl=0, outbox_ttl=0, delay=3_600_000)


async def test_unpublished_events_are_kept_until_the_stream_has_them(
    database_url: str, nats_server: NatsServer
) -> None:
    settings = stream_settings(database_url, nats_server)
    async with running_app(settings) as app, api_client(app) as client:
        store: SqlStateStore = app.state.store
        pruner = Pruner(store, PRUNE_AT_ONCE, idempotency_ttl=1, keep_unpublished=True)
        await record_user(client, "published")
        await wait_for_messages(nats_server, 1)
        nats_server.kill()
        for n in range(3):
            await record_user(client, f"waiting{n}")

        async def dispatched() -> bool:
            # The webhook dispatcher has passed them (no subscriptions): only the
            # stream's position holds them now.
            pruned = await pruner.prune()
            return pruned.outbox == 1

        await eventually(dispatched, what="the published event to be pruned")
        assert [r.revision for r in await store.changes(0, 10)] == [2, 3, 4]
        assert (await pruner.prune()).outbox == 0

        nats_server.start()
        await wait_for_messages(nats_server, 4)

        async def caught_up() -> bool:
            return (await pruner.prune()).outbox > 0 or not await store.changes(0, 10)

        await eventually(caught_up, what="the published events to be pruned")
        assert await store.changes(0, 10) == []
