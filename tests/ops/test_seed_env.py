"""The original service's example `.env`, verbatim: the service starts with it,
every setting in it does what it meant (the local Redis tier is on because its
host is set), and the ones that do nothing here are named once in the log."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.hub import ServiceProcess, wait_ready
from tests.support.ports import free_port

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
    (tmp_path / ".env").write_text(SEED_ENV, encoding="utf-8")
    port = free_port()
    # Only the port is given on the command line (the seed's 3002 may be taken).
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], {}, tmp_path, "seed"
    )
    for name in list(server.env):
        if name.startswith(
            ("REDIS_", "EXTERNAL_DB", "WEBHOOK_", "LOG_", "APP_", "DATABASE_", "API_")
        ):
            del server.env[name]
    await server.start()
    try:
        await wait_ready(server, port)
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
    assert log.count("EXTERNAL_DB_URL/EXTERNAL_DB_API_KEY are set") == 1, log[-3000:]
    assert log.count("WEBHOOK_SECRET_KEY is an example value") == 1
