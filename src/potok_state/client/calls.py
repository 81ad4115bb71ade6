"""What each client method sends, without I/O: one `Call` per request, built once
per logical call, so every retry sends the same bytes and the same Idempotency-Key.
`AsyncPotokClient` and `PotokClient` only send them (the sans-I/O split httpx and
h11 use), so the two cannot differ in what they ask."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

import httpx
from pydantic import BaseModel, JsonValue

from potok_state.client.errors import ApiError, WriteContention, retry_after_seconds
from potok_state.events.schemas import PublishEvent
from potok_state.states.schemas import (
    BatchHeartbeatRequest,
    BatchItem,
    BatchRequest,
    HeartbeatRequest,
    RecordStateRequest,
    SortSpec,
    UpdateStateRequest,
)
from potok_state.webhooks.schemas import ReplayRequest, SubscriptionCreate, SubscriptionPatch

DEFAULT_URL = "http://localhost:3002"
URL_ENV = "POTOK_URL"
API_KEY_ENV = "POTOK_API_KEY"
PREFIX = "/api/v1"
# On a list: the revision the page was read at (the server's kit.headers.REVISION_HEADER).
REVISION_HEADER = "X-Potok-Revision"

OneOrMany = str | Sequence[str]
"""One value or several: a lone `str` is one value (not its characters)."""


def many(values: OneOrMany) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


def base_url_from(value: str | None) -> str:
    return value or os.environ.get(URL_ENV) or DEFAULT_URL


def api_key_from(value: str | None) -> str | None:
    return value or os.environ.get(API_KEY_ENV) or None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    `attempts` counts every try (1 = never retry). The wait before retry n (from 1)
    is a random time between half and all of `backoff` × 2ⁿ⁻¹, at most `max_backoff`
    (jitter, so many clients do not come back in step); a `Retry-After` the service
    sent is waited for instead, up to `max_retry_after`; beyond that the error is
    raised.
    """

    attempts: int = 4
    backoff: float = 0.2
    max_backoff: float = 5.0
    max_retry_after: float = 60.0

    def delay(self, retry: int, retry_after: float | None = None) -> float | None:
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


NO_RETRIES = RetryPolicy(attempts=1)

# Statuses worth asking again: rate limited, or the service (or a proxy) failing.
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Call:
    """One request. `repeatable`: sending it twice has the effect of sending it once
    (a read, a write carrying an Idempotency-Key, a heartbeat), so the client may
    send it again after a broken connection or a transient answer."""

    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    repeatable: bool = False

    def request(
        self,
        client: httpx.Client | httpx.AsyncClient,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Request:
        headers = dict(self.headers)
        params: list[tuple[str, str | int | float | bool | None]] = list(self.params)
        if self.content is not None:
            headers["content-type"] = "application/json"
        return client.build_request(
            self.method,
            self.path,
            params=params or None,
            content=self.content,
            headers=headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )


def retry_delay(
    call: Call,
    policy: RetryPolicy,
    retry: int,
    *,
    error: Exception | None = None,
    response: httpx.Response | None = None,
    api_error: ApiError | None = None,
) -> float | None:
    """The wait before sending `call` again as retry number `retry` (from 1), or None
    when it must not be sent again."""
    if retry >= policy.attempts:
        return None
    if error is not None:
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            # Nothing was sent: trying again repeats nothing, whatever the method.
            return policy.delay(retry)
        return policy.delay(retry) if call.repeatable else None
    if response is None or not call.repeatable:
        return None
    if response.status_code in _TRANSIENT_STATUSES:
        return policy.delay(retry, retry_after_seconds(response.headers))
    if isinstance(api_error, WriteContention):
        return policy.delay(retry)
    return None


def _segment(value: str) -> str:
    return quote(value, safe="")


def _json(model: BaseModel) -> bytes:
    """The body, without the fields left None (top level only: a None inside
    metadata is a JSON merge patch removing that key, and must be sent)."""
    return model.model_dump_json(exclude={name for name, value in model if value is None}).encode()


def _write_headers(idempotency_key: str | None, if_version: int | None = None) -> dict[str, str]:
    headers = {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if if_version is not None:
        headers["If-Match"] = f'"{if_version}"'
    return headers


def new_idempotency_key() -> str:
    return f"potok-client-{uuid.uuid4().hex}"


def state_path(entity: str, entity_id: str | None = None) -> str:
    path = f"{PREFIX}/states/{_segment(entity)}"
    return path if entity_id is None else f"{path}/{_segment(entity_id)}"


# -- states --------------------------------------------------------------------


def record(
    entity: str,
    entity_id: str,
    status: str,
    *,
    metadata: Mapping[str, JsonValue] | None,
    reason: str | None,
    ttl: int | None,
    idempotency_key: str | None,
) -> Call:
    body = RecordStateRequest.model_construct(
        entityId=entity_id,
        status=status,
        metadata=dict(metadata) if metadata is not None else None,
        reason=reason,
        ttl=ttl,
    )
    return Call(
        "POST",
        state_path(entity),
        content=_json(body),
        headers=_write_headers(idempotency_key),
        repeatable=idempotency_key is not None,
    )


def get(entity: str, entity_id: str, *, as_of: int | datetime | None = None) -> Call:
    """One state; with `as_of` (a revision, or a time: naive is UTC), as it was then."""
    params = []
    if as_of is not None:
        params.append(("asOf", str(as_of) if isinstance(as_of, int) else as_of.isoformat()))
    return Call("GET", state_path(entity, entity_id), params, repeatable=True)


def update(
    entity: str,
    entity_id: str,
    *,
    merge: bool,
    status: str | None,
    metadata: Mapping[str, JsonValue] | None,
    reason: str | None,
    ttl: int | None,
    if_version: int | None,
    idempotency_key: str | None,
) -> Call:
    body = UpdateStateRequest.model_construct(
        status=status,
        metadata=dict(metadata) if metadata is not None else None,
        reason=reason,
        ttl=ttl,
    )
    return Call(
        "PATCH" if merge else "PUT",
        state_path(entity, entity_id),
        content=_json(body),
        headers=_write_headers(idempotency_key, if_version),
        repeatable=idempotency_key is not None,
    )


def delete(
    entity: str, entity_id: str, *, if_version: int | None, idempotency_key: str | None
) -> Call:
    return Call(
        "DELETE",
        state_path(entity, entity_id),
        headers=_write_headers(idempotency_key, if_version),
        repeatable=idempotency_key is not None,
    )


def history(entity: str, entity_id: str, *, limit: int, cursor: str | None) -> Call:
    params = [("limit", str(limit))]
    if cursor is not None:
        params.append(("cursor", cursor))
    return Call("GET", f"{state_path(entity, entity_id)}/history", params, repeatable=True)


def query(
    entity: str,
    *,
    status: OneOrMany,
    metadata: Mapping[str, str],
    updated_after: datetime | None,
    updated_before: datetime | None,
    sort: SortSpec,
    limit: int,
    cursor: str | None,
) -> Call:
    params = [("status", value) for value in many(status)]
    params.extend((f"metadata.{key}", value) for key, value in metadata.items())
    if updated_after is not None:
        params.append(("updatedAfter", updated_after.isoformat()))
    if updated_before is not None:
        params.append(("updatedBefore", updated_before.isoformat()))
    params.extend([("sort", sort), ("limit", str(limit))])
    if cursor is not None:
        params.append(("cursor", cursor))
    return Call("GET", state_path(entity), params, repeatable=True)


def batch(
    entity: str, items: Sequence[BatchItem], *, atomic: bool, idempotency_key: str | None
) -> Call:
    body = BatchRequest.model_construct(items=list(items), atomic=atomic)
    return Call(
        "POST",
        f"{state_path(entity)}/batch",
        content=_json(body),
        headers=_write_headers(idempotency_key),
        repeatable=idempotency_key is not None,
    )


def heartbeat(entity: str, entity_id: str, *, ttl: int | None) -> Call:
    # Renewing a lease twice has the effect of renewing it once: repeatable.
    body = HeartbeatRequest.model_construct(ttl=ttl)
    return Call(
        "POST", f"{state_path(entity, entity_id)}/heartbeat", content=_json(body), repeatable=True
    )


def heartbeat_many(entity: str, entity_ids: OneOrMany, *, ttl: int | None) -> Call:
    body = BatchHeartbeatRequest.model_construct(ids=many(entity_ids), ttl=ttl)
    return Call("POST", f"{state_path(entity)}/heartbeat", content=_json(body), repeatable=True)


def state_machines() -> Call:
    return Call("GET", f"{PREFIX}/state-machines", repeatable=True)


def state_machine(entity: str) -> Call:
    return Call("GET", f"{PREFIX}/state-machines/{_segment(entity)}", repeatable=True)


# -- change feed and events -----------------------------------------------------


def changes(after: int, *, limit: int) -> Call:
    return Call(
        "GET", f"{PREFIX}/changes", [("after", str(after)), ("limit", str(limit))], repeatable=True
    )


def emit(event_type: str, data: Mapping[str, JsonValue], *, idempotency_key: str | None) -> Call:
    body = PublishEvent.model_construct(type=event_type, data=dict(data))
    return Call(
        "POST",
        f"{PREFIX}/events",
        content=_json(body),
        headers=_write_headers(idempotency_key),
        repeatable=idempotency_key is not None,
    )


def watch(
    entity: str | None,
    *,
    after: int,
    status: OneOrMany,
    event: OneOrMany,
    entity_id_prefix: str | None,
) -> Call:
    path = f"{state_path(entity)}/watch" if entity is not None else f"{PREFIX}/watch"
    params = [("status", value) for value in many(status)]
    params.extend(("event", value) for value in many(event))
    if entity_id_prefix is not None:
        params.append(("entityId", entity_id_prefix))
    return Call(
        "GET",
        path,
        params,
        headers={"Last-Event-ID": str(after), "Accept": "text/event-stream"},
        repeatable=True,
    )


# -- webhooks -------------------------------------------------------------------

SUBSCRIPTIONS = f"{PREFIX}/webhooks/subscriptions"


def create_subscription(
    url: str,
    events: OneOrMany,
    *,
    secret: str | None,
    description: str | None,
    entity_types: OneOrMany | None,
) -> Call:
    body = SubscriptionCreate.model_construct(
        url=url,
        events=many(events),
        secret=secret,
        description=description,
        entityTypes=many(entity_types) if entity_types is not None else None,
    )
    return Call("POST", SUBSCRIPTIONS, content=_json(body))


def list_subscriptions() -> Call:
    return Call("GET", SUBSCRIPTIONS, repeatable=True)


def get_subscription(subscription_id: str) -> Call:
    return Call("GET", f"{SUBSCRIPTIONS}/{_segment(subscription_id)}", repeatable=True)


def update_subscription(
    subscription_id: str,
    *,
    url: str | None,
    events: OneOrMany | None,
    description: str | None,
    entity_types: OneOrMany | None,
    active: bool | None,
) -> Call:
    body = SubscriptionPatch.model_construct(
        url=url,
        events=many(events) if events is not None else None,
        description=description,
        entityTypes=many(entity_types) if entity_types is not None else None,
        active=active,
    )
    # Setting the same fields twice leaves them as once: repeatable.
    return Call(
        "PATCH",
        f"{SUBSCRIPTIONS}/{_segment(subscription_id)}",
        content=_json(body),
        repeatable=True,
    )


def delete_subscription(subscription_id: str) -> Call:
    return Call("DELETE", f"{SUBSCRIPTIONS}/{_segment(subscription_id)}")


def deliveries(subscription_id: str, *, limit: int, before: int | None) -> Call:
    params = [("limit", str(limit))]
    if before is not None:
        params.append(("before", str(before)))
    return Call(
        "GET", f"{SUBSCRIPTIONS}/{_segment(subscription_id)}/deliveries", params, repeatable=True
    )


def retry_delivery(delivery_id: int) -> Call:
    return Call("POST", f"{PREFIX}/webhooks/deliveries/{delivery_id}/retry")


def replay(
    subscription_id: str,
    *,
    from_revision: int | None,
    since: datetime | None,
    to_revision: int | None,
) -> Call:
    body = ReplayRequest.model_construct(
        fromRevision=from_revision, since=since, toRevision=to_revision
    )
    return Call("POST", f"{SUBSCRIPTIONS}/{_segment(subscription_id)}/replay", content=_json(body))


def ping_subscription(subscription_id: str) -> Call:
    return Call("POST", f"{SUBSCRIPTIONS}/{_segment(subscription_id)}/test")


def head_revision(entity: str | None) -> Call:
    """The newest revision, as the `X-Potok-Revision` of a one-item list (of `entity`,
    or of any type: the revision is store-wide)."""
    return Call("GET", state_path(entity or "potok-client"), [("limit", "1")], repeatable=True)
