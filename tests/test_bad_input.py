"""Every kind of bad input is a 4xx with the error body of docs/operations.md, never a
500, and never writes anything (no revision is spent, nothing reaches the
change feed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI

from potok_state.app import create_app
from tests.conftest import make_settings

ERROR_FIELDS = {"statusCode", "error", "code", "message", "details", "requestId"}


@dataclass(frozen=True)
class Bad:
    """One bad request and the answer it must get."""

    name: str
    method: str
    path: str
    status: int
    code: str = "validation_error"
    json: object = None
    content: bytes | None = None
    params: dict[str, str | int] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def record(**changes: object) -> dict[str, object]:
    return {"entityId": "t1", "status": "created", **changes}


def raw_record(metadata: bytes) -> bytes:
    return b'{"entityId":"t1","status":"created","metadata":' + metadata + b"}"


STATES = "/api/v1/states"
BAD_REQUESTS = [
    # names in the path
    Bad("uppercase type", "POST", f"{STATES}/Task", 422, json=record()),
    Bad("type starting with a digit", "POST", f"{STATES}/9task", 422, json=record()),
    Bad("type too long", "POST", f"{STATES}/{'t' * 65}", 422, json=record()),
    Bad("id with a space in the path", "GET", f"{STATES}/task/bad%20id", 422),
    Bad("id too long in the path", "PUT", f"{STATES}/task/{'x' * 129}", 422, json={"status": "x"}),
    Bad("type with a slash-like char", "GET", f"{STATES}/ta%24k", 422),
    # names in the body
    Bad("empty entityId", "POST", f"{STATES}/task", 422, json=record(entityId="")),
    Bad("entityId with a space", "POST", f"{STATES}/task", 422, json=record(entityId="a b")),
    Bad("entityId too long", "POST", f"{STATES}/task", 422, json=record(entityId="x" * 129)),
    Bad("uppercase status", "POST", f"{STATES}/task", 422, json=record(status="Created")),
    Bad("status with a dash", "POST", f"{STATES}/task", 422, json=record(status="in-progress")),
    Bad(
        "status unknown to the table",
        "POST",
        f"{STATES}/task",
        422,
        "unknown_status",
        json=record(status="nope"),
    ),
    Bad("PUT status not a name", "PUT", f"{STATES}/task/t1", 422, json={"status": "A B"}),
    # NUL, which PostgreSQL cannot store as text
    Bad(
        "NUL in a metadata value",
        "POST",
        f"{STATES}/task",
        422,
        json=record(metadata={"a": "x\x00"}),
    ),
    Bad("NUL in a metadata key", "POST", f"{STATES}/task", 422, json=record(metadata={"\x00": 1})),
    Bad("NUL in a reason", "POST", f"{STATES}/task", 422, json=record(reason="\x00")),
    Bad(
        "NUL in custom event data",
        "POST",
        "/api/v1/events",
        422,
        json={"type": "custom.x", "data": {"deep": [{"k": "\x00"}]}},
    ),
    # metadata
    Bad("metadata an array", "POST", f"{STATES}/task", 422, json=record(metadata=[1, 2])),
    Bad("metadata a string", "POST", f"{STATES}/task", 422, json=record(metadata="x")),
    Bad("metadata a number", "POST", f"{STATES}/task", 422, json=record(metadata=5)),
    Bad(
        "metadata over 64 KiB",
        "POST",
        f"{STATES}/task",
        422,
        "metadata_too_large",
        json=record(metadata={"blob": "x" * 65_536}),
    ),
    # 254 levels pass validation but cannot be written inside the event payload.
    Bad(
        "metadata nested 254 deep",
        "POST",
        f"{STATES}/task",
        422,
        "invalid_metadata",
        content=raw_record(deep(254)),
    ),
    Bad(
        "batch metadata nested 254 deep",
        "POST",
        f"{STATES}/task/batch",
        422,
        "batch_rejected",
        content=b'{"items":[' + raw_record(deep(254)) + b"]}",
    ),
    Bad("metadata nested 300 deep", "POST", f"{STATES}/task", 422, content=raw_record(deep(300))),
    Bad("metadata nested 2000 deep", "POST", f"{STATES}/task", 422, content=raw_record(deep(2000))),
    Bad("metadata NaN", "POST", f"{STATES}/task", 422, content=raw_record(b'{"n":NaN}')),
    Bad("metadata Infinity", "POST", f"{STATES}/task", 422, content=raw_record(b'{"n":1e999}')),
    Bad(
        "lone surrogate in metadata",
        "POST",
        f"{STATES}/task",
        422,
        content=raw_record(b'{"k":"\\ud800"}'),
    ),
    Bad(
        "lone surrogate in reason",
        "POST",
        f"{STATES}/task",
        422,
        content=b'{"entityId":"t1","status":"created","reason":"\\udfff"}',
    ),
    Bad(
        "batch item metadata over 64 KiB",
        "POST",
        f"{STATES}/task/batch",
        422,
        "batch_rejected",
        json={"items": [record(metadata={"blob": "x" * 65_536})]},
    ),
    # JSON syntax, fields and types
    Bad("malformed JSON", "POST", f"{STATES}/task", 422, content=b'{"entityId": "t1",'),
    Bad(
        "JSON without a Content-Type",
        "POST",
        f"{STATES}/task",
        422,
        "not_json",
        content=b'{"entityId":"t1","status":"created"}',
        headers={"content-type": ""},
    ),
    Bad(
        "JSON as text/plain to a webhook route",
        "POST",
        "/api/v1/webhooks/subscriptions",
        422,
        "not_json",
        content=b'{"url":"https://example.com/h","events":["*"]}',
        headers={"content-type": "text/plain"},
    ),
    Bad(
        "a form body",
        "POST",
        "/api/v1/events",
        422,
        "not_json",
        content=b"type=custom.x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Bad("not UTF-8", "POST", f"{STATES}/task", 422, content=b'{"entityId": "\xff\xfe"}'),
    Bad("JSON but not an object", "POST", f"{STATES}/task", 422, json=["t1", "created"]),
    Bad("empty body", "POST", f"{STATES}/task", 422, content=b""),
    Bad("unknown field", "POST", f"{STATES}/task", 422, json=record(colour="red")),
    Bad("unknown field on PUT", "PUT", f"{STATES}/task/t1", 422, json={"state": "x"}),
    Bad("status a number", "POST", f"{STATES}/task", 422, json=record(status=5)),
    Bad("entityId a number", "POST", f"{STATES}/task", 422, json=record(entityId=12)),
    Bad("reason too long", "POST", f"{STATES}/task", 422, json=record(reason="r" * 1001)),
    Bad("empty update", "PUT", f"{STATES}/task/t1", 422, "empty_update", json={}),
    Bad("batch without items", "POST", f"{STATES}/task/batch", 422, json={"items": []}),
    Bad(
        "batch over 1000 items",
        "POST",
        f"{STATES}/task/batch",
        422,
        json={"items": [record(entityId=f"t{i}") for i in range(1001)]},
    ),
    Bad(
        "batch atomic not a boolean",
        "POST",
        f"{STATES}/task/batch",
        422,
        json={"items": [record()], "atomic": "sometimes"},
    ),
    Bad(
        "batch expectedVersion zero",
        "POST",
        f"{STATES}/task/batch",
        422,
        json={"items": [record(expectedVersion=0)]},
    ),
    Bad("event type not custom", "POST", "/api/v1/events", 422, json={"type": "entity.created"}),
    Bad(
        "event data an array", "POST", "/api/v1/events", 422, json={"type": "custom.x", "data": [1]}
    ),
    Bad(
        "If-Match not a version",
        "PUT",
        f"{STATES}/task/t1",
        400,
        "bad_request",
        json={"status": "in_progress"},
        headers={"If-Match": '"abc"'},
    ),
    Bad(
        "Idempotency-Key too long",
        "POST",
        f"{STATES}/task",
        422,
        json=record(),
        headers={"Idempotency-Key": "k" * 256},
    ),
    # query parameters
    Bad("huge limit", "GET", f"{STATES}/task", 422, params={"limit": 100_000}),
    Bad("zero limit", "GET", f"{STATES}/task", 422, params={"limit": 0}),
    Bad("limit beyond 64 bits", "GET", f"{STATES}/task", 422, params={"limit": "9" * 30}),
    Bad("limit not a number", "GET", f"{STATES}/task", 422, params={"limit": "ten"}),
    Bad("history huge limit", "GET", f"{STATES}/task/t1/history", 422, params={"limit": 501}),
    Bad("changes huge limit", "GET", "/api/v1/changes", 422, params={"limit": 10**9}),
    Bad("changes negative after", "GET", "/api/v1/changes", 422, params={"after": -1}),
    Bad("changes after beyond 64 bits", "GET", "/api/v1/changes", 422, params={"after": 2**64}),
    Bad("unknown sort", "GET", f"{STATES}/task", 422, params={"sort": "colour"}),
    Bad("status filter not a name", "GET", f"{STATES}/task", 422, params={"status": "A B"}),
    Bad("updatedAfter not a time", "GET", f"{STATES}/task", 422, params={"updatedAfter": "soon"}),
    Bad(
        "bad metadata filter key",
        "GET",
        f"{STATES}/task",
        422,
        "invalid_query",
        params={"metadata.a b": "1"},
    ),
    Bad("bad cursor", "GET", f"{STATES}/task", 422, "invalid_query", params={"cursor": "garbage"}),
    Bad(
        "bad cursor of base64 JSON",
        "GET",
        f"{STATES}/task",
        422,
        "invalid_query",
        params={"cursor": "WzEsMiwzXQ"},
    ),
    Bad("cursor too long", "GET", f"{STATES}/task", 422, params={"cursor": "c" * 513}),
    Bad(
        "bad history cursor",
        "GET",
        f"{STATES}/task/t1/history",
        422,
        "invalid_query",
        params={"cursor": "%%%"},
    ),
    Bad(
        "history cursor beyond 64 bits",
        "GET",
        f"{STATES}/task/t1/history",
        422,
        "invalid_query",
        params={"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTk5"},
    ),
    # extreme dates, long filter lists, NUL in the URL
    Bad(
        "updatedAfter beyond UTC",
        "GET",
        f"{STATES}/task",
        422,
        params={"updatedAfter": "0001-01-01T00:00:00+14:00"},
    ),
    Bad(
        "updatedBefore beyond UTC",
        "GET",
        f"{STATES}/task",
        422,
        params={"updatedBefore": "9999-12-31T23:59:59-14:00"},
    ),
    Bad(
        "replay since beyond UTC",
        "POST",
        "/api/v1/webhooks/subscriptions/sub_x/replay",
        422,
        json={"since": "0001-01-01T00:00:00+14:00"},
    ),
    Bad(
        "2000 metadata filters",
        "GET",
        f"{STATES}/task",
        422,
        "invalid_query",
        params={f"metadata.k{i}": "v" for i in range(2000)},
    ),
    Bad(
        "cursor holding NUL",
        "GET",
        f"{STATES}/task",
        422,
        "invalid_query",
        params={"cursor": "WyJlbnRpdHlJZCIsICJhXHUwMDAwYiIsICJ4XHUwMDAweSJd", "sort": "entityId"},
    ),
    Bad(
        "NUL in a query value",
        "GET",
        f"{STATES}/task",
        422,
        "nul_not_allowed",
        params={"metadata.a": "x\x00"},
    ),
    Bad("NUL in the path", "GET", f"{STATES}/task/a%00b", 422, "nul_not_allowed"),
    # routes and methods
    Bad("unknown route", "GET", "/api/v1/nothing-here", 404, "not_found"),
    Bad("unknown route outside the API", "GET", "/favicon.ico", 404, "not_found"),
    Bad(
        "unknown state machine",
        "GET",
        "/api/v1/state-machines/gadget",
        404,
        "state_machine_not_found",
    ),
    Bad("DELETE a collection", "DELETE", f"{STATES}/task", 405, "method_not_allowed"),
    Bad("PATCH the change feed", "PATCH", "/api/v1/changes", 405, "method_not_allowed", json={}),
    Bad("PUT the batch route", "PUT", f"{STATES}/task/batch/x", 404, "not_found", json={}),
]


def assert_error_body(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == ERROR_FIELDS, body
    assert body["statusCode"] == status
    assert body["requestId"] == response.headers["x-request-id"]
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], dict)
    if code is not None:
        assert body["code"] == code, body


async def assert_nothing_written(client: httpx.AsyncClient) -> None:
    changes = await client.get("/api/v1/changes")
    assert changes.status_code == 200, changes.text
    assert changes.json() == {"items": [], "nextAfter": 0}
    states = await client.get(f"{STATES}/task")
    assert states.json()["items"] == []


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=lambda bad: bad.name)
async def test_bad_input_is_a_4xx_with_the_error_body_and_writes_nothing(
    client: httpx.AsyncClient, bad: Bad
) -> None:
    headers = dict(bad.headers)
    if bad.content is not None:
        headers.setdefault("content-type", "application/json")
    response = await client.request(
        bad.method,
        bad.path,
        json=bad.json if bad.content is None and bad.json is not None else None,
        content=bad.content,
        params=bad.params,
        headers=headers,
    )
    assert_error_body(response, bad.status, bad.code)
    await assert_nothing_written(client)


async def test_bad_input_against_an_existing_state_keeps_it(client: httpx.AsyncClient) -> None:
    created = await client.post(STATES + "/task", json=record(metadata={"keep": True}))
    assert created.status_code == 201, created.text
    before = created.json()
    attempts = [
        ("PUT", {"status": "In Progress"}, None),
        ("PUT", None, raw_record_update(b'{"k":"\\ud800"}')),
        ("PATCH", {"metadata": {"blob": "x" * 70_000}}, None),
        ("PATCH", None, raw_record_update(deep(254))),
        ("PUT", {"status": "completed"}, None),  # forbidden transition: 409
    ]
    for method, body, content in attempts:
        response = await client.request(
            method,
            f"{STATES}/task/t1",
            json=body,
            content=content,
            headers={"content-type": "application/json"} if content is not None else None,
        )
        assert 400 <= response.status_code < 500, response.text
        assert_error_body(response, response.status_code)
    after = await client.get(f"{STATES}/task/t1")
    assert after.json() == before
    history = await client.get(f"{STATES}/task/t1/history")
    assert [entry["version"] for entry in history.json()["items"]] == [1]


def raw_record_update(metadata: bytes) -> bytes:
    return b'{"metadata":' + metadata + b"}"


async def test_text_spelling_the_nul_escape_is_fine(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{STATES}/task", json=record(metadata={"path": "C:\\u0000"}, reason="\\u0000")
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == {"path": "C:\\u0000"}


async def test_if_match_is_strict(client: httpx.AsyncClient) -> None:
    created = await client.post(f"{STATES}/task", json=record())
    assert created.status_code == 201
    superscript = await client.put(
        f"{STATES}/task/t1", json={"status": "in_progress"}, headers=[(b"If-Match", b'"\xb2"')]
    )
    assert_error_body(superscript, 400, "bad_request")
    # If-Match compares strongly: a weak tag never matches (RFC 9110, 13.1.1),
    # and is refused naming it.
    weak = await client.put(
        f"{STATES}/task/t1", json={"status": "in_progress"}, headers={"If-Match": 'W/"1"'}
    )
    assert_error_body(weak, 400, "bad_request")
    strong = await client.put(
        f"{STATES}/task/t1", json={"status": "in_progress"}, headers={"If-Match": '"1"'}
    )
    assert strong.status_code == 200, strong.text


async def test_integer_beyond_64_bits_is_read_as_a_double(client: httpx.AsyncClient) -> None:
    # As JavaScript's JSON.parse reads it; the store could not keep the exact integer.
    response = await client.post(
        f"{STATES}/task",
        content=raw_record(b'{"n":-123456789012345678901234567890}'),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == {"n": -1.2345678901234568e29}
    event = await client.post(
        "/api/v1/events",
        content=b'{"type":"custom.x","data":{"n":99999999999999999999999999}}',
        headers={"content-type": "application/json"},
    )
    assert event.status_code == 201, event.text
    assert event.json()["data"] == {"n": 1e26}


@pytest.fixture
async def limited_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url, request_body_max_bytes=4096))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://potok.test",
            headers={"x-api-key": "gateway-service-key"},
        ) as http:
            yield http


async def test_body_over_the_request_limit_is_413(limited_client: httpx.AsyncClient) -> None:
    response = await limited_client.post(
        f"{STATES}/task", json=record(metadata={"blob": "x" * 5000})
    )
    assert_error_body(response, 413, "payload_too_large")
    await assert_nothing_written(limited_client)


PROTECTED = [
    ("GET", f"{STATES}/task"),
    ("POST", f"{STATES}/task"),
    ("GET", f"{STATES}/task/t1"),
    ("PUT", f"{STATES}/task/t1"),
    ("DELETE", f"{STATES}/task/t1"),
    ("GET", f"{STATES}/task/t1/history"),
    ("POST", f"{STATES}/task/batch"),
    ("GET", "/api/v1/changes"),
    ("POST", "/api/v1/events"),
    ("GET", "/api/v1/state-machines"),
    ("GET", "/api/v1/webhooks/subscriptions"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_missing_or_unknown_api_key_is_401(app: FastAPI, method: str, path: str) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://potok.test") as anonymous:
        for key in (None, "", "wrong-key", "gateway-service-key ", "admin-key-but-longer"):
            headers = {} if key is None else {"x-api-key": key}
            response = await anonymous.request(
                method, path, headers=headers, json=record() if method in {"POST", "PUT"} else None
            )
            assert_error_body(response, 401, "unauthorized")
    # Authentication is checked before anything is written.
    assert (await app.state.store.changes(0, 10)) == []


@pytest.mark.parametrize(
    "path",
    ["/health", "/health/liveness", "/health/readiness", "/api-docs", "/api-docs/openapi.json"],
)
async def test_health_and_docs_stay_public(app: FastAPI, path: str) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://potok.test") as anonymous:
        response = await anonymous.get(path)
    assert response.status_code == 200, response.text
