"""`AsyncPotokClient`: the service's API as typed async methods (docs/client.md).

The blocking `PotokClient` (client/sync.py) is generated from this file when the
package is installed (scripts/generate_sync_client.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType

import httpx
from pydantic import JsonValue, TypeAdapter

from potok_state.client import calls
from potok_state.client.calls import REVISION_HEADER, Call, OneOrMany, RetryPolicy, retry_delay
from potok_state.client.errors import ApiError, ServerError, TransportError, error_for
from potok_state.client.models import (
    BatchHeartbeatResult,
    BatchItem,
    BatchResult,
    ChangePage,
    Delivery,
    DeliveryPage,
    Event,
    HistoryEntry,
    HistoryPage,
    LeaseView,
    QueryPage,
    ReplayResult,
    StateMachineView,
    StatePage,
    StateView,
    Subscription,
    SubscriptionCreated,
    TestResult,
)
from potok_state.client.watching import SseDecoder, WatchPosition
from potok_state.states.schemas import SortSpec

_SUBSCRIPTIONS: TypeAdapter[list[Subscription]] = TypeAdapter(list[Subscription])
_MACHINES: TypeAdapter[list[StateMachineView]] = TypeAdapter(list[StateMachineView])


class AsyncPotokClient:
    """An async client for one Potok State Service.

    `base_url` defaults to `POTOK_URL` (else `http://localhost:3002`), `api_key` to
    `POTOK_API_KEY`. Writes carry a fresh Idempotency-Key per call unless
    `idempotent_writes=False` (or the caller gives its own key), which is what makes
    them safe to retry. Use it as an async context manager, or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        idempotent_writes: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key = calls.api_key_from(api_key)
        self._http = httpx.AsyncClient(
            base_url=calls.base_url_from(base_url),
            headers={"x-api-key": key} if key else None,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )
        self._timeout = timeout
        self.retry = retry or RetryPolicy()
        self.idempotent_writes = idempotent_writes

    async def __aenter__(self) -> AsyncPotokClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def _key(self, given: str | None) -> str | None:
        if given is not None:
            return given
        return calls.new_idempotency_key() if self.idempotent_writes else None

    async def _send(self, call: Call) -> httpx.Response:
        """Send `call`, again after a transient failure when it is safe to; the
        answer when it is a success, else its error raised."""
        tries = 0
        while True:
            tries += 1
            try:
                response = await self._http.send(call.request(self._http))
            except httpx.TransportError as exc:
                delay = retry_delay(call, self.retry, tries, error=exc)
                if delay is None:
                    raise TransportError(f"{call.method} {call.path}: {exc!r}", cause=exc) from exc
            else:
                if response.is_success:
                    return response
                error = error_for(response.status_code, response.content, response.headers)
                delay = retry_delay(call, self.retry, tries, response=response, api_error=error)
                if delay is None:
                    raise error
            await asyncio.sleep(delay)

    # -- states ---------------------------------------------------------------

    async def record(
        self,
        entity: str,
        entity_id: str,
        status: str,
        *,
        metadata: Mapping[str, JsonValue] | None = None,
        reason: str | None = None,
        ttl: int | None = None,
        idempotency_key: str | None = None,
    ) -> StateView:
        """Create the state, or apply a validated transition to it (POST /states/{entity})."""
        call = calls.record(
            entity,
            entity_id,
            status,
            metadata=metadata,
            reason=reason,
            ttl=ttl,
            idempotency_key=self._key(idempotency_key),
        )
        return StateView.model_validate_json((await self._send(call)).content)

    async def get(
        self, entity: str, entity_id: str, *, as_of: int | datetime | None = None
    ) -> StateView:
        """One state; with `as_of` (a revision, or a time) the state as it was then."""
        return StateView.model_validate_json(
            (await self._send(calls.get(entity, entity_id, as_of=as_of))).content
        )

    async def put(
        self,
        entity: str,
        entity_id: str,
        *,
        status: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
        reason: str | None = None,
        ttl: int | None = None,
        if_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> StateView:
        """Update the state; `metadata`, when given, replaces it. `if_version`: only
        at that version (else `VersionMismatch`)."""
        call = calls.update(
            entity,
            entity_id,
            merge=False,
            status=status,
            metadata=metadata,
            reason=reason,
            ttl=ttl,
            if_version=if_version,
            idempotency_key=self._key(idempotency_key),
        )
        return StateView.model_validate_json((await self._send(call)).content)

    async def patch(
        self,
        entity: str,
        entity_id: str,
        *,
        status: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
        reason: str | None = None,
        ttl: int | None = None,
        if_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> StateView:
        """As `put`, but `metadata` merges (JSON merge patch: None removes a key)."""
        call = calls.update(
            entity,
            entity_id,
            merge=True,
            status=status,
            metadata=metadata,
            reason=reason,
            ttl=ttl,
            if_version=if_version,
            idempotency_key=self._key(idempotency_key),
        )
        return StateView.model_validate_json((await self._send(call)).content)

    async def delete(
        self,
        entity: str,
        entity_id: str,
        *,
        if_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        call = calls.delete(
            entity, entity_id, if_version=if_version, idempotency_key=self._key(idempotency_key)
        )
        await self._send(call)

    async def history(
        self, entity: str, entity_id: str, *, page_size: int = 100
    ) -> AsyncIterator[HistoryEntry]:
        """Every change of the state, oldest first, page after page."""
        cursor: str | None = None
        while True:
            call = calls.history(entity, entity_id, limit=page_size, cursor=cursor)
            page = HistoryPage.model_validate_json((await self._send(call)).content)
            for entry in page.items:
                yield entry
            if page.nextCursor is None:
                return
            cursor = page.nextCursor

    async def query_page(
        self,
        entity: str,
        *,
        status: OneOrMany = (),
        metadata: Mapping[str, str] | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        sort: SortSpec = "-updatedAt",
        limit: int = 50,
        cursor: str | None = None,
    ) -> QueryPage:
        """One page of a query, with the revision it was read at."""
        call = calls.query(
            entity,
            status=status,
            metadata=metadata or {},
            updated_after=updated_after,
            updated_before=updated_before,
            sort=sort,
            limit=limit,
            cursor=cursor,
        )
        response = await self._send(call)
        page = StatePage.model_validate_json(response.content)
        revision = int(response.headers.get(REVISION_HEADER, "0"))
        return QueryPage(items=page.items, next_cursor=page.nextCursor, revision=revision)

    async def query(
        self,
        entity: str,
        *,
        status: OneOrMany = (),
        metadata: Mapping[str, str] | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        sort: SortSpec = "-updatedAt",
        page_size: int = 100,
    ) -> AsyncIterator[StateView]:
        """Every matching state, following the cursor from page to page."""
        cursor: str | None = None
        while True:
            page = await self.query_page(
                entity,
                status=status,
                metadata=metadata,
                updated_after=updated_after,
                updated_before=updated_before,
                sort=sort,
                limit=page_size,
                cursor=cursor,
            )
            for state in page.items:
                yield state
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def batch(
        self,
        entity: str,
        items: Sequence[BatchItem],
        *,
        atomic: bool = True,
        idempotency_key: str | None = None,
    ) -> BatchResult:
        """Up to 1000 records in one transaction. `atomic=True`: all or nothing
        (`BatchRejected` lists the failures); `False`: per-item results."""
        call = calls.batch(entity, items, atomic=atomic, idempotency_key=self._key(idempotency_key))
        return BatchResult.model_validate_json((await self._send(call)).content)

    async def heartbeat(self, entity: str, entity_id: str, *, ttl: int | None = None) -> LeaseView:
        """Renew the state's lease (`NoLease` when it holds none or it lapsed)."""
        call = calls.heartbeat(entity, entity_id, ttl=ttl)
        return LeaseView.model_validate_json((await self._send(call)).content)

    async def heartbeat_many(
        self, entity: str, entity_ids: OneOrMany, *, ttl: int | None = None
    ) -> BatchHeartbeatResult:
        call = calls.heartbeat_many(entity, entity_ids, ttl=ttl)
        return BatchHeartbeatResult.model_validate_json((await self._send(call)).content)

    async def state_machines(self) -> list[StateMachineView]:
        return _MACHINES.validate_json((await self._send(calls.state_machines())).content)

    async def state_machine(self, entity: str) -> StateMachineView:
        response = await self._send(calls.state_machine(entity))
        return StateMachineView.model_validate_json(response.content)

    # -- change feed, events, watch ---------------------------------------------

    async def changes(self, after: int = 0, *, page_size: int = 1000) -> AsyncIterator[Event]:
        """Every change and custom event after revision `after`, in revision order,
        until the newest."""
        while True:
            call = calls.changes(after, limit=page_size)
            page = ChangePage.model_validate_json((await self._send(call)).content)
            for event in page.items:
                yield event
            if len(page.items) < page_size:
                return
            after = page.nextAfter

    async def emit(
        self,
        event_type: str,
        data: Mapping[str, JsonValue] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Event:
        """Publish a custom event (`custom.<name>`) to subscribers and watchers."""
        call = calls.emit(event_type, data or {}, idempotency_key=self._key(idempotency_key))
        return Event.model_validate_json((await self._send(call)).content)

    async def head_revision(self, entity: str | None = None) -> int:
        """The newest revision of the store."""
        response = await self._send(calls.head_revision(entity))
        return int(response.headers.get(REVISION_HEADER, "0"))

    async def watch(
        self,
        entity: str | None = None,
        *,
        after: int | None = None,
        status: OneOrMany = (),
        event: OneOrMany = (),
        entity_id_prefix: str | None = None,
        max_reconnects: int | None = None,
        idle_timeout: float = 45.0,
    ) -> AsyncIterator[Event]:
        """Every change after revision `after` (default: from now), then live, for
        ever. When the connection breaks, the server restarts or the stream ends, it
        reconnects from the last revision handed out (no gap, no duplicate);
        `max_reconnects` failed reconnects in a row raise `TransportError` (None:
        keep trying, as an EventSource does). A stream silent for `idle_timeout`
        seconds (heartbeats come every 15 s) counts as broken. `WatchReset` when the
        position is no longer kept: list again, then watch from the list's revision.
        """
        position = WatchPosition(after if after is not None else await self.head_revision(entity))
        timeout = httpx.Timeout(self._timeout, read=idle_timeout)
        failures = 0
        while True:
            call = calls.watch(
                entity,
                after=position.after,
                status=status,
                event=event,
                entity_id_prefix=entity_id_prefix,
            )
            problem: Exception | None = None
            try:
                async with self._stream(call, timeout) as lines:
                    failures = 0
                    decoder = SseDecoder()
                    async for line in lines:
                        sse = decoder.feed(line)
                        if sse is not None and (change := position.take(sse)) is not None:
                            yield change
            except httpx.TransportError as exc:
                problem = exc
            except ApiError as exc:
                if not (isinstance(exc, ServerError) or exc.status_code == 429):
                    raise
                problem = exc
            failures += 1
            if max_reconnects is not None and failures > max_reconnects:
                raise TransportError(f"watch: gave up after {failures} tries", cause=problem)
            await asyncio.sleep(self.retry.delay(min(failures, 8)) or 0.0)

    @asynccontextmanager
    async def _stream(
        self, call: Call, stream_timeout: httpx.Timeout
    ) -> AsyncIterator[AsyncIterator[str]]:
        response = await self._http.send(call.request(self._http, stream_timeout), stream=True)
        try:
            if not response.is_success:
                await response.aread()
                raise error_for(response.status_code, response.content, response.headers)
            yield response.aiter_lines()
        finally:
            await response.aclose()

    # -- webhooks -----------------------------------------------------------------

    async def create_subscription(
        self,
        url: str,
        events: OneOrMany = ("*",),
        *,
        secret: str | None = None,
        description: str | None = None,
        entity_types: OneOrMany | None = None,
    ) -> SubscriptionCreated:
        """Subscribe `url`; the answer holds the signing secret, shown only here."""
        call = calls.create_subscription(
            url, events, secret=secret, description=description, entity_types=entity_types
        )
        return SubscriptionCreated.model_validate_json((await self._send(call)).content)

    async def subscriptions(self) -> list[Subscription]:
        return _SUBSCRIPTIONS.validate_json((await self._send(calls.list_subscriptions())).content)

    async def subscription(self, subscription_id: str) -> Subscription:
        response = await self._send(calls.get_subscription(subscription_id))
        return Subscription.model_validate_json(response.content)

    async def update_subscription(
        self,
        subscription_id: str,
        *,
        url: str | None = None,
        events: OneOrMany | None = None,
        description: str | None = None,
        entity_types: OneOrMany | None = None,
        active: bool | None = None,
    ) -> Subscription:
        call = calls.update_subscription(
            subscription_id,
            url=url,
            events=events,
            description=description,
            entity_types=entity_types,
            active=active,
        )
        return Subscription.model_validate_json((await self._send(call)).content)

    async def delete_subscription(self, subscription_id: str) -> None:
        await self._send(calls.delete_subscription(subscription_id))

    async def deliveries(
        self, subscription_id: str, *, page_size: int = 100
    ) -> AsyncIterator[Delivery]:
        """The subscription's delivery log, newest first, page after page."""
        before: int | None = None
        while True:
            call = calls.deliveries(subscription_id, limit=page_size, before=before)
            page = DeliveryPage.model_validate_json((await self._send(call)).content)
            for delivery in page.items:
                yield delivery
            if page.nextCursor is None:
                return
            before = page.nextCursor

    async def retry_delivery(self, delivery_id: int) -> Delivery:
        response = await self._send(calls.retry_delivery(delivery_id))
        return Delivery.model_validate_json(response.content)

    async def replay(
        self,
        subscription_id: str,
        *,
        from_revision: int | None = None,
        since: datetime | None = None,
        to_revision: int | None = None,
    ) -> ReplayResult:
        """Send again what the subscription matched from a revision or a time (one of
        them), up to `to_revision` or the newest event; more than WEBHOOK_REPLAY_MAX
        deliveries is refused whole (`ValidationFailed`, code `replay_too_large`)."""
        call = calls.replay(
            subscription_id, from_revision=from_revision, since=since, to_revision=to_revision
        )
        return ReplayResult.model_validate_json((await self._send(call)).content)

    async def ping_subscription(self, subscription_id: str) -> TestResult:
        """Send a `webhook.test` ping now; what the receiver answered."""
        response = await self._send(calls.ping_subscription(subscription_id))
        return TestResult.model_validate_json(response.content)
