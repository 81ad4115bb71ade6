"""Private server processes (redis-server, nats-server) for one test: each in its
own directory under the test's tmp_path, on a free port, all killed at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar


class PrivateServer(Protocol):
    def start(self) -> None: ...

    def kill(self) -> None: ...


Server = TypeVar("Server", bound=PrivateServer)


def private_servers(
    tmp_path: Path, make: Callable[[Path], Server], name: str
) -> Iterator[Callable[[], Server]]:
    """For a fixture to `yield from`: a function that starts one more server."""
    started: list[Server] = []

    def start() -> Server:
        workdir = tmp_path / f"{name}-{len(started)}"
        workdir.mkdir()
        server = make(workdir)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()
