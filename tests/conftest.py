"""Shared fixtures: every test that takes `database_url` runs on both SQLite and a
private PostgreSQL database created for this run (never skipped: if PostgreSQL is
unreachable the PostgreSQL half fails with the reason)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from potok_state.app import create_app
from potok_state.settings import Settings
from potok_state.storage.migrate import upgrade_to_head
from potok_state.storage.tables import metadata
from tests.support.admin_service import AdminService
from tests.support.private_servers import private_servers
from tests.support.redis_server import RedisServer

POSTGRES_ADMIN_URL = os.environ.get(
    "POTOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
API_KEY = "gateway-service-key"
TEST_API_KEYS = f"gateway:{API_KEY},admin:admin-key"
BACKENDS = ["sqlite", "postgresql"]
T = TypeVar("T")


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def postgres_admin(statement: str) -> None:
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} "
            f"(set POTOK_TEST_POSTGRES_URL): {exc}"
        ) from exc
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def run_in_thread(work: Coroutine[object, object, T]) -> T:
    """Run a coroutine to completion on a private loop, from sync code that may
    itself be called while the test loop is running."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    name = f"potok_test_{uuid.uuid4().hex[:12]}"
    run_in_thread(postgres_admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = sqlalchemy_url(f"{base}/{name}")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(upgrade_to_head, url).result()
    yield url
    run_in_thread(postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def reset_postgres(url: str) -> None:
    counters = {"revision_counter": "value", "webhook_dispatch_cursor": "revision"}
    tables = ", ".join(
        f'"{table.name}"' for table in metadata.sorted_tables if table.name not in counters
    )
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(f"TRUNCATE {tables} RESTART IDENTITY")
        for table, column in counters.items():
            await connection.execute(f"UPDATE {table} SET {column} = 0")
    finally:
        await connection.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/potok-state.db"
    url: str = request.getfixturevalue("postgres_url")
    run_in_thread(reset_postgres(url))
    return url


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "api_keys": TEST_API_KEYS,
        "log_format": "json",
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://potok.test", headers={"x-api-key": API_KEY}
    ) as http:
        yield http


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start private `redis-server` processes on free ports."""
    yield from private_servers(tmp_path, RedisServer, "redis")


@pytest.fixture
async def admin_service(tmp_path: Path) -> AsyncIterator[AdminService]:
    """A private reference Admin Service process (tests/support/admin_service.py)."""
    workdir = tmp_path / "admin-service"
    workdir.mkdir()
    server = AdminService(workdir)
    await server.start()
    yield server
    await server.kill()


@pytest.fixture(scope="session")
async def shared_admin_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[AdminService]:
    """One reference Admin Service for tests that never stop it; each test keeps
    its documents in collections of its own (`external_backend`)."""
    server = AdminService(tmp_path_factory.mktemp("shared-admin-service"))
    await server.start()
    yield server
    await server.kill()
