"""The app in this process (ASGI), for tests that need more than the `app` and
`client` fixtures give: several instances, or settings of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from potok_state.app import create_app
from potok_state.settings import Settings
from tests.conftest import API_KEY


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def api_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://potok.test",
        headers={"x-api-key": API_KEY},
    )
