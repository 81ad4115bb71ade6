from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.nats_server import NatsServer


@pytest.fixture
def nats_servers(tmp_path: Path) -> Iterator[Callable[[], NatsServer]]:
    """Start private `nats-server -js` processes on free ports; all are killed at
    teardown."""
    started: list[NatsServer] = []

    def start() -> NatsServer:
        workdir = tmp_path / f"nats-{len(started)}"
        workdir.mkdir()
        server = NatsServer(workdir)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def nats_server(nats_servers: Callable[[], NatsServer]) -> NatsServer:
    return nats_servers()
