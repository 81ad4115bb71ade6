"""The States API suite runs on every storage: SQLite, PostgreSQL, and the
external backend (a SQLite journal drained into the reference Admin Service).
In external mode each test ends by checking that the Admin Service holds
exactly the states the service answers with (docs/external.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from potok_state.external.replicator import Replicator
from potok_state.settings import Settings, StorageBackend
from tests.conftest import BACKENDS, make_settings, reset_postgres, run_in_thread
from tests.support.admin_service import AdminService, external_backend
from tests.support.polling import eventually

EXTERNAL = "external"


@pytest.fixture(params=[*BACKENDS, EXTERNAL])
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if storage == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        run_in_thread(reset_postgres(url))
        return url
    return f"sqlite+aiosqlite:///{tmp_path}/potok-state.db"


@pytest.fixture
def settings(database_url: str, storage: str, request: pytest.FixtureRequest) -> Settings:
    if storage != EXTERNAL:
        return make_settings(database_url)
    admin: AdminService = request.getfixturevalue("shared_admin_service")
    return make_settings(database_url, **external_backend(admin))


@pytest.fixture
async def app(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[FastAPI]:
    from potok_state.app import create_app

    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application
        if settings.storage_backend is StorageBackend.EXTERNAL:
            admin: AdminService = request.getfixturevalue("shared_admin_service")
            await _admin_service_matches_the_journal(application, settings, admin)


async def _admin_service_matches_the_journal(
    application: FastAPI, settings: Settings, admin: AdminService
) -> None:
    replicator: Replicator = application.state.health_service.external

    async def drained() -> bool:
        await replicator.measure()
        return replicator.backlog == 0

    await eventually(drained, timeout=30, what="the journal to drain")
    rows = await application.state.store.db.read(
        lambda tx: tx.fetch("SELECT entity_type, entity_id, status, version FROM states")
    )
    journal = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    documents = await admin.documents(settings.external_db.states_collection)
    stored = {(d["entityType"], d["entityId"]): (d["status"], d["version"]) for d in documents}
    assert stored == journal
    history = await admin.documents(settings.external_db.history_collection)
    expected = await application.state.store.db.read(
        lambda tx: tx.fetchval("SELECT count(*) FROM state_history")
    )
    assert len(history) == expected
