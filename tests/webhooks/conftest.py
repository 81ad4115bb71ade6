from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.support.hub import in_process, webhook_settings
from tests.support.receivers import Receiver

StartReceiver = Callable[[], Awaitable[Receiver]]


@pytest.fixture
async def start_receiver() -> AsyncIterator[StartReceiver]:
    """Start as many receivers as a test needs; all stop at teardown."""
    started: list[Receiver] = []

    async def start() -> Receiver:
        receiver = Receiver()
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(start_receiver: StartReceiver) -> Receiver:
    return await start_receiver()


@pytest.fixture
async def hub(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    """The service with fast webhook settings (set up after `receiver`, so it
    stops first and never talks to a receiver that is gone)."""
    async with in_process(webhook_settings(database_url)) as client:
        yield client
