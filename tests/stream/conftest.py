from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.nats_server import NatsServer
from tests.support.private_servers import private_servers


@pytest.fixture
def nats_servers(tmp_path: Path) -> Iterator[Callable[[], NatsServer]]:
    """Start private `nats-server -js` processes on free ports."""
    yield from private_servers(tmp_path, NatsServer, "nats")


@pytest.fixture
def nats_server(nats_servers: Callable[[], NatsServer]) -> NatsServer:
    return nats_servers()
