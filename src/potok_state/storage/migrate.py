"""Schema migrations (Alembic), run by `potok-state migrate` and, for an
embedded SQLite file, by `serve` itself."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from potok_state.storage.database import Database, Tx

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    """Blocking: call from a thread when an event loop is running."""
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def schema_revision(db: Database) -> str | None:
    """The Alembic revision the database is at; None before the first migration."""

    async def work(tx: Tx) -> str | None:
        try:
            value = await tx.fetchval("SELECT version_num FROM alembic_version")
        except (sqlite3.OperationalError, asyncpg.UndefinedTableError):
            return None
        return None if value is None else str(value)

    return await db.read(work)
