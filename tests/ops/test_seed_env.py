"""The original service's example `.env`, verbatim: the service starts with it,
every setting in it does what it meant (the local Redis tier is on because its
host is set), and the ones that do nothing here are named once in the log. And
this repository's `.env.example`, copied to `.env` as README.md says: the
service starts with it as shipped, and every name in it is a setting."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import httpx

from tests.support.hub import POTOK_STATE, ServiceProcess, wait_ready
from tests.support.ports import free_port
from tests.support.settings import setting_names

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"

SEED_ENV = """\
NODE_ENV=development
PORT=3002
APP_NAME=potok-state-management-service

EXTERNAL_DB_URL=http://localhost:3000
EXTERNAL_DB_API_KEY=state-service-key
DB_CONNECTION_TIMEOUT=30000
DB_RETRY_ATTEMPTS=3

REDIS_LOCAL_HOST=localhost
REDIS_LOCAL_PORT=6379
REDIS_LOCAL_DB=0
REDIS_LOCAL_PASSWORD=

REDIS_GLOBAL_ENABLED=false
REDIS_GLOBAL_HOST=redis.example.com
REDIS_GLOBAL_PORT=6379
REDIS_GLOBAL_DB=1
REDIS_GLOBAL_PASSWORD=

WEBHOOK_DELIVERY_TIMEOUT=30000
WEBHOOK_MAX_RETRIES=3
WEBHOOK_RETRY_DELAY=5000
WEBHOOK_SECRET_KEY=your-webhook-secret

LOG_LEVEL=debug
LOG_FORMAT=pretty  # или json для production
"""


async def test_the_seed_env_starts_the_service_and_names_what_it_ignores(
    tmp_path: Path,
) -> None:
    server, port = await _serve_with_dotenv(tmp_path, SEED_ENV, "seed")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = (await client.get("/health")).json()
            assert "redisLocal" in health["checks"]  # on: REDIS_LOCAL_HOST is set
            assert "redisGlobal" not in health["checks"]  # REDIS_GLOBAL_ENABLED=false
            recorded = await client.post(
                "/api/v1/states/task",
                json={"entityId": "seed-1", "status": "created"},
                headers={"x-api-key": "gateway-service-key"},
            )
            assert recorded.status_code == 201, recorded.text
    finally:
        await server.stop()
    log = server.log
    unused_external = (
        "EXTERNAL_DB_URL, EXTERNAL_DB_API_KEY, DB_CONNECTION_TIMEOUT, DB_RETRY_ATTEMPTS are set "
        "but STORAGE_BACKEND=sql"
    )
    assert log.count(unused_external) == 1, log[-3000:]
    unused_global = (
        "REDIS_GLOBAL_HOST, REDIS_GLOBAL_PORT, REDIS_GLOBAL_DB, REDIS_GLOBAL_PASSWORD are set "
        "but REDIS_GLOBAL_ENABLED=false"
    )
    assert log.count(unused_global) == 1, log[-3000:]
    # In use, with an example value: said so, not called unused.
    assert log.count("WEBHOOK_SECRET_KEY is an example value") == 1
    assert "config.example_value" in log


async def test_the_env_example_starts_the_service_as_shipped(tmp_path: Path) -> None:
    server, port = await _serve_with_dotenv(tmp_path, ENV_EXAMPLE.read_text(), "example")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/health")).json()["status"] == "ok"
            recorded = await client.post(
                "/api/v1/states/task",
                json={"entityId": "example-1", "status": "created"},
                headers={"x-api-key": "gateway-service-key"},
            )
            assert recorded.status_code == 201, recorded.text
    finally:
        await server.stop()
    assert (tmp_path / "data" / "potok-state.db").is_file()  # its DATABASE_URL

    shown = await asyncio.to_thread(
        subprocess.run,
        [str(POTOK_STATE), "config"],
        cwd=tmp_path,
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    effective = json.loads(shown.stdout)
    assert effective["APP_NAME"] == {"value": "potok-state-management-service", "source": ".env"}


def test_every_name_in_the_env_example_is_a_setting() -> None:
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert len(named) > 20
    assert named <= setting_names(), named - setting_names()


async def _serve_with_dotenv(workdir: Path, dotenv: str, name: str) -> tuple[ServiceProcess, int]:
    """`potok-state serve` in `workdir` with this `.env` and nothing else of the
    test's environment; only the port is given on the command line (3002 may be
    taken). Started and ready; the caller stops it."""
    (workdir / ".env").write_text(dotenv, encoding="utf-8")
    port = free_port()
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], {}, workdir, name
    )
    for variable in list(server.env):
        if variable.startswith(
            ("REDIS_", "EXTERNAL_DB", "WEBHOOK_", "LOG_", "APP_", "DATABASE_", "API_", "NODE_ENV")
        ):
            del server.env[variable]
    await server.start()
    try:
        await wait_ready(server, port)
    except BaseException:
        await server.stop()
        raise
    return server, port
