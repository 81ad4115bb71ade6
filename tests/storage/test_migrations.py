"""Alembic migrations create exactly the schema of `storage/tables.py`, `potok-state
migrate` applies them, and a server never runs on a PostgreSQL schema it does
not match."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from potok_state.app import SchemaNotCurrent, create_app
from potok_state.storage.engine import create_engine
from potok_state.storage.migrate import current_revision, head_revision, upgrade_to_head
from potok_state.storage.tables import metadata
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    make_settings,
    postgres_admin,
    run_in_thread,
    sqlalchemy_url,
)
from tests.support.ports import free_port

CLI = str(Path(sys.executable).with_name("potok-state"))


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A PostgreSQL database with nothing in it, dropped after the test."""
    name = f"potok_empty_{uuid.uuid4().hex[:12]}"
    run_in_thread(postgres_admin(f'CREATE DATABASE "{name}"'))
    yield sqlalchemy_url(f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}")
    run_in_thread(postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


def schema_differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_alembic_head_creates_exactly_the_declared_schema(empty_database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)

    engine = create_engine(empty_database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(schema_differences)
            tables = await connection.run_sync(table_names)
            assert await connection.run_sync(current_revision) == head_revision()
    finally:
        await engine.dispose()
    assert differences == []
    assert tables == set(metadata.tables) | {"alembic_version"}


async def test_upgrading_twice_changes_nothing(empty_database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    engine = create_engine(empty_database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == head_revision()
    finally:
        await engine.dispose()


def cli_environment(database_url: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "API_KEYS", "APP_", "NODE_ENV", "WEBHOOK_"))
    }
    environment.update(
        {"DATABASE_URL": database_url, "API_KEYS": "gateway:k", "LOG_FORMAT": "json"}
    )
    return environment


def run_cli(args: list[str], database_url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=cli_environment(database_url),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_migrate_command_creates_the_schema_on_an_empty_postgres(
    empty_postgres_url: str, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(run_cli, ["migrate"], empty_postgres_url, tmp_path)

    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    engine = create_engine(empty_postgres_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == head_revision()
            assert await connection.run_sync(schema_differences) == []
    finally:
        await engine.dispose()


async def test_server_refuses_an_unmigrated_postgres_database(empty_postgres_url: str) -> None:
    app = create_app(make_settings(empty_postgres_url))

    with pytest.raises(SchemaNotCurrent, match="run `potok-state migrate`"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on an unmigrated database")

    # Nothing was created behind the operator's back, and the refused start
    # left no connection open.
    engine = create_engine(empty_postgres_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(table_names) == set()
            others = await connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert others.scalar_one() == 0
    finally:
        await engine.dispose()


def test_serve_command_exits_with_the_migrate_hint(empty_postgres_url: str, tmp_path: Path) -> None:
    for command in (["serve", "--host", "127.0.0.1", "--port", str(free_port())], ["worker"]):
        result = run_cli(command, empty_postgres_url, tmp_path)

        assert result.returncode != 0
        # One line for the operator, no traceback around it.
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("potok-state: the database schema is at revision None")
        assert line.endswith("run `potok-state migrate` first")
