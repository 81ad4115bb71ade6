"""Operational surface: health, request ids, offline API docs, `potok-state
config`, and production settings that refuse to start (docs/operations.md)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi import FastAPI

from tests.support.hub import ServiceProcess, wait_ready
from tests.support.ports import free_port

CLI = str(Path(sys.executable).with_name("potok-state"))
SECRET_API_KEY = "s3cret-gateway-key-7f1c"
SECRET_WEBHOOK_KEY = "s3cret-webhook-signing-9d2e"
SECRET_REDIS_PASSWORD = "s3cret-redis-password-4a8b"
SECRET_DB_PASSWORD = "s3cret-db-password-0c5f"


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://potok.test") as http:
        yield http


async def test_health_reports_storage_with_latency(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] in {"ok", "degraded"}
    assert isinstance(body["version"], str)
    assert body["version"]
    assert body["uptimeSeconds"] >= 0
    storage = body["checks"]["storage"]
    assert storage["status"] == "up"
    assert storage["latencyMs"] >= 0
    # Only what means something for this check: no error while up, no backlog
    # (an externalDb field).
    assert set(storage) == {"status", "latencyMs"}


async def test_liveness_is_ok(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/health/liveness")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_has_the_documented_shape(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/health/readiness")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ready": True,
        "storage": True,
        "redis": "disabled",
        "externalDb": "disabled",
    }


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    first = await client.get("/api/v1/states/task/missing")
    second = await client.get("/health/liveness")
    for response in (first, second):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.json()["requestId"] == first.headers["x-request-id"]


async def test_request_id_is_echoed_when_given(client: httpx.AsyncClient) -> None:
    given = "gateway-req:42/abc=="
    response = await client.get("/api/v1/states/task/missing", headers={"X-Request-Id": given})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == given
    assert response.json()["requestId"] == given


@pytest.mark.parametrize("given", ["has space", "x" * 129, "semi;colon", ""])
async def test_unusable_request_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/health/liveness", headers={"X-Request-Id": given})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls.extend(value for name, value in attrs if name in {"src", "href"} and value)


async def test_api_docs_use_only_local_assets(anonymous: httpx.AsyncClient) -> None:
    page = await anonymous.get("/api-docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", page.text), "the docs page must work offline"
    parser = _References()
    parser.feed(page.text)
    referenced = set(parser.urls) | set(re.findall(r"url: '([^']+)'", page.text))
    assert referenced, page.text
    assert "/api-docs/openapi.json" in referenced
    for url in sorted(referenced):
        assert url.startswith("/"), url
        asset = await anonymous.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url


async def test_openapi_document_is_valid(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/api-docs/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    schemathesis.openapi.from_dict(document).validate()
    assert "/api/v1/states/{entity}" in document["paths"]
    schemes = document["components"]["securitySchemes"].values()
    assert {(s["type"], s["in"], s["name"]) for s in schemes} == {("apiKey", "header", "x-api-key")}


def cli(args: list[str], workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `potok-state` with only the given settings (no `.env` in `workdir`)."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT"}
    }
    environment.update(env)
    return subprocess.run(
        [CLI, *args],
        env=environment,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_prints_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    result = cli(
        ["config"],
        tmp_path,
        API_KEYS=f"gateway:{SECRET_API_KEY}",
        WEBHOOK_SECRET_KEY=SECRET_WEBHOOK_KEY,
        REDIS_LOCAL_PASSWORD=SECRET_REDIS_PASSWORD,
        EXTERNAL_DB_API_KEY="s3cret-external-db-key",
        DATABASE_URL=f"postgresql+asyncpg://potok:{SECRET_DB_PASSWORD}@db.internal/potok",
        PORT="4100",
        THROTTLE_LIMIT="77",
    )

    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for secret in (
        SECRET_API_KEY,
        SECRET_WEBHOOK_KEY,
        SECRET_REDIS_PASSWORD,
        SECRET_DB_PASSWORD,
        "s3cret",
    ):
        assert secret not in output
    assert "4100" in result.stdout
    assert "77" in result.stdout
    assert "db.internal" in result.stdout
    assert "********" in result.stdout


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "API_KEYS"),
        ({"API_KEYS": "  "}, "API_KEYS"),
        ({"API_KEYS": "gateway:gateway-service-key"}, "API_KEYS"),
        ({"API_KEYS": f"gateway:{SECRET_API_KEY}"}, "WEBHOOK_SECRET_KEY"),
        (
            {"API_KEYS": f"gateway:{SECRET_API_KEY}", "WEBHOOK_SECRET_KEY": "development-secret"},
            "WEBHOOK_SECRET_KEY",
        ),
        (
            {"API_KEYS": f"gateway:{SECRET_API_KEY}", "WEBHOOK_SECRET_KEY": "your-webhook-secret"},
            "WEBHOOK_SECRET_KEY",
        ),
    ],
)
@pytest.mark.parametrize("env_name", ["APP_ENV", "NODE_ENV"])
def test_production_without_real_secrets_refuses_to_start(
    tmp_path: Path, env: dict[str, str], setting: str, env_name: str
) -> None:
    result = cli(
        ["serve", "--host", "127.0.0.1", "--port", "1"],
        tmp_path,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/never.db",
        **{env_name: "production"},
        **env,
    )

    assert result.returncode != 0
    assert setting in result.stderr, result.stderr
    assert "production" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "never.db").exists()
    if SECRET_API_KEY in str(env):
        assert SECRET_API_KEY not in result.stderr


def test_serve_on_a_busy_port_stops_before_starting_anything(tmp_path: Path) -> None:
    """The port is taken before the lifespan runs: no delivery worker starts and
    nothing claims to have started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            ["serve", "--host", "127.0.0.1", "--port", str(port)],
            tmp_path,
            LOG_FORMAT="json",
            LOG_LEVEL="info",
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "address already in use" in output.lower(), output
    for started in ("service.started", "webhook.worker.started", "startup complete"):
        assert started not in output, output


async def test_ctrl_c_stops_serve_quietly(tmp_path: Path) -> None:
    """SIGINT (Ctrl+C) ends `serve` with status 0 and no traceback."""
    port = free_port()
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"},
        tmp_path,
        "ctrl-c",
    )
    await server.start()
    await wait_ready(server, port)
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(server.process.wait(), 30) == 0
    assert "Traceback" not in server.log
