"""The client and the CLI against a real `potok-state serve` on 127.0.0.1.

What the client does is the same on every backend, so one SQLite server per module
serves most tests (each test uses its own entity ids); tests that stop or restart
the server start their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import API_KEY
from tests.support.hub import ServiceProcess, http_service, service_env
from tests.support.ports import free_port


@dataclass(frozen=True)
class Service:
    process: ServiceProcess
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return API_KEY


def sqlite_env(workdir: Path, **extra: str) -> dict[str, str]:
    return service_env(f"sqlite+aiosqlite:///{workdir}/potok-state.db", **extra)


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    workdir = tmp_path_factory.mktemp("client-service")
    port = free_port()
    # One attempt per delivery: a failing receiver shows a failed delivery at once.
    env = sqlite_env(workdir, WEBHOOK_MAX_RETRIES="0", WEBHOOK_DELIVERY_TIMEOUT="2000")
    async with http_service(port, env, workdir) as process:
        yield Service(process, port, workdir)
