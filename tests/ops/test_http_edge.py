"""What every HTTP response carries and what every request is held to: security
headers (and a CSP under which /api-docs still renders), gzip for large
responses, the body limit (413), and the request id in headers, bodies and logs."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from potok_state.app import create_app
from tests.conftest import API_KEY, make_settings
from tests.support.hub import ServiceProcess, http_service, remote_client, service_env
from tests.support.polling import eventually
from tests.support.ports import free_port

BODY_LIMIT = 4096
HELMET_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture
async def limited_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", request_body_max_bytes=BODY_LIMIT
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(limited_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=limited_app),
        base_url="http://potok.test",
        headers={"x-api-key": API_KEY},
    ) as http:
        yield http


@dataclass(frozen=True, slots=True)
class Server:
    process: ServiceProcess
    port: int


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One real `potok-state serve` (uvicorn) for the streaming and log tests."""
    workdir = tmp_path_factory.mktemp("edge")
    env = service_env(
        f"sqlite+aiosqlite:///{workdir}/db.sqlite",
        LOG_LEVEL="info",
        REQUEST_BODY_MAX_BYTES=str(BODY_LIMIT),
    )
    port = free_port()
    async with http_service(port, env, workdir) as process:
        yield Server(process, port)


@pytest.fixture
async def remote(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with remote_client(server.port) as http:
        yield http


# -- security headers -------------------------------------------------------------


async def test_security_headers_on_every_kind_of_response(client: httpx.AsyncClient) -> None:
    responses = [
        await client.get("/health/liveness"),
        await client.post("/api/v1/states/task", json={"entityId": "h-1", "status": "created"}),
        await client.get("/api/v1/states/task/missing"),
        await client.get("/api/v1/states/task", headers={"x-api-key": "wrong"}),
        await client.post("/api/v1/states/task", content=b"x" * (BODY_LIMIT + 1)),
        await client.get("/metrics"),
    ]
    assert [r.status_code for r in responses] == [200, 201, 404, 401, 413, 200]
    for response in responses:
        for name, value in HELMET_HEADERS.items():
            assert response.headers[name] == value, (response.url, name)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy


async def test_api_docs_render_under_their_content_security_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/api-docs")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    policy = _directives(page.headers["content-security-policy"])
    assert len(page.headers.get_list("content-security-policy")) == 1

    # Every script and stylesheet is local and served, so 'self' covers it.
    assets = re.findall(r'<script src="([^"]+)"', page.text)
    assets += re.findall(r'<link[^>]*href="([^"]+)"', page.text)
    assert len(assets) >= 3
    for url in assets:
        assert url.startswith("/api-docs/"), url
        assert (await client.get(url)).status_code == 200, url
    assert "'self'" in policy["script-src"]
    assert "'self'" in policy["style-src"]

    # The inline bootstrap script is allowed by its hash, not by 'unsafe-inline'.
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert inline
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"]
    assert "'unsafe-inline'" not in policy["script-src"]
    assert "'unsafe-eval'" not in policy["script-src"]

    # The UI fetches the OpenAPI document from the same origin.
    assert "'self'" in policy["connect-src"]
    assert (await client.get("/api-docs/openapi.json")).status_code == 200


def _directives(policy: str) -> dict[str, list[str]]:
    directives = {}
    for part in policy.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


# -- gzip ---------------------------------------------------------------------------


async def test_large_responses_are_gzipped_small_ones_are_not(client: httpx.AsyncClient) -> None:
    large = await client.get("/api-docs/openapi.json", headers={"accept-encoding": "gzip"})
    assert large.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in large.headers["vary"].lower()
    assert large.json()["openapi"]  # httpx decoded it

    raw = await _raw_get(client, "/api-docs/openapi.json")
    assert json.loads(gzip.decompress(raw))["openapi"]
    assert len(raw) < len(large.content)

    small = await client.get("/health/liveness", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers
    plain = await client.get("/api-docs/openapi.json", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers


async def _raw_get(client: httpx.AsyncClient, path: str) -> bytes:
    request = client.build_request("GET", path, headers={"accept-encoding": "gzip"})
    response = await client.send(request, stream=True)
    try:
        return b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


# -- body limit -------------------------------------------------------------------


def _assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["statusCode"] == 413
    assert body["code"] == "payload_too_large"
    assert str(BODY_LIMIT) in body["message"]
    assert body["requestId"] == response.headers["x-request-id"]


async def test_declared_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/states/task", content=b"{" + b" " * BODY_LIMIT + b"}")
    _assert_too_large(response)


async def test_a_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    body = b'{"entityId":"at-limit","status":"created"}'
    body += b" " * (BODY_LIMIT - len(body))  # trailing whitespace is valid JSON
    response = await client.post(
        "/api/v1/states/task", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


def _chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    yield b'{"entityId":"chunked","status":"created","metadata":{"pad":"'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}}'


async def test_streamed_body_over_the_limit_is_413_in_process(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/states/task", content=_async_chunks(BODY_LIMIT * 4))
    _assert_too_large(response)
    assert (await client.get("/api/v1/states/task/chunked")).status_code == 404


async def test_streamed_body_over_the_limit_is_413_on_the_real_server(
    remote: httpx.AsyncClient,
) -> None:
    """Chunked transfer (no Content-Length): counted while it streams."""
    response = await remote.post("/api/v1/states/task", content=_async_chunks(BODY_LIMIT * 64))
    _assert_too_large(response)
    assert "content-length" not in response.request.headers
    assert (await remote.get("/api/v1/states/task/chunked")).status_code == 404
    assert (await remote.get("/health/liveness")).status_code == 200


async def _async_chunks(total: int) -> AsyncIterator[bytes]:
    for chunk in _chunks(total):
        yield chunk


# -- request id -------------------------------------------------------------------


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health/liveness", headers={"x-request-id": "trace-abc.123"})
    assert echoed.headers["x-request-id"] == "trace-abc.123"

    generated = await client.get("/health/liveness")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])

    # An id that could forge log lines or headers is replaced, not echoed.
    forged = await client.get("/health/liveness", headers={"x-request-id": "a b\tc" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])

    error = await client.get("/api/v1/states/task/none", headers={"x-request-id": "trace-404"})
    assert error.headers["x-request-id"] == "trace-404"
    assert error.json()["requestId"] == "trace-404"


async def test_every_log_line_of_a_request_carries_its_id(
    server: Server, remote: httpx.AsyncClient
) -> None:
    created = await remote.post(
        "/api/v1/states/task",
        json={"entityId": "logged-1", "status": "created"},
        headers={"x-request-id": "trace-log-1"},
    )
    assert created.status_code == 201, created.text
    updated = await remote.post(
        "/api/v1/states/task", json={"entityId": "logged-1", "status": "in_progress"}
    )
    assert updated.status_code == 200, updated.text
    generated = updated.headers["x-request-id"]

    def lines_of(request_id: str) -> list[dict[str, Any]]:
        return [line for line in _json_lines(server) if line.get("request_id") == request_id]

    async def logged() -> bool:
        return len(lines_of("trace-log-1")) >= 2 and len(lines_of(generated)) >= 2

    await eventually(logged, what="the log lines of both requests")

    first = {line["event"]: line for line in lines_of("trace-log-1")}
    assert first["http.request"]["status"] == 201
    assert first["http.request"]["route"] == "/api/v1/states/{entity}"
    assert first["entity.created"]["entityId"] == "logged-1"
    second = {line["event"]: line for line in lines_of(generated)}
    assert second["entity.updated"]["previousStatus"] == "created"
    assert second["entity.updated"]["newStatus"] == "in_progress"

    # No line about a request or a change is without a request id.
    for line in _json_lines(server):
        if line["event"] == "http.request" or str(line["event"]).startswith("entity."):
            assert line.get("request_id"), line


def _json_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for text in server.process.log.splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


async def test_unfinished_bodies_are_answered_408_and_closed(
    database_url: str, tmp_path: Path
) -> None:
    """Connections that start a body and stop sending are closed after
    REQUEST_BODY_TIMEOUT, not held forever; nothing is written."""
    port = free_port()
    env = service_env(database_url, REQUEST_BODY_TIMEOUT="300")
    async with http_service(port, env, tmp_path), remote_client(port) as client:
        request = (
            b"POST /api/v1/states/task HTTP/1.1\r\nHost: x\r\n"
            b"x-api-key: " + API_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"entityId":'
        )
        connections = []
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            connections.append((reader, writer))
        for reader, writer in connections:
            answer = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b'"code":"request_timeout"' in answer
            writer.close()
        assert (await client.get("/api/v1/changes")).json()["items"] == []


async def test_every_log_line_is_json_when_asked(tmp_path: Path) -> None:
    """uvicorn's and alembic's lines too, not only the service's own."""
    port = free_port()
    env = service_env(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", LOG_LEVEL="info")
    async with http_service(port, env, tmp_path) as server, remote_client(port) as client:
        assert (await client.get("/health/liveness")).status_code == 200
        await client.get("/api/v1/states/task/missing")
    lines = [line for line in server.log.splitlines() if line.strip()]
    assert any('"logger": "uvicorn.error"' in line for line in lines)
    for line in lines:
        entry = json.loads(line)
        assert {"event", "level", "timestamp"} <= set(entry), line
