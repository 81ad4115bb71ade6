"""docs/examples/stream_consumer.py runs as written: a durable pull consumer that
starts after a revision, then resumes where it acknowledged last."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.stream.test_publishing import STREAM, record_user, stream_settings, wait_for_messages
from tests.support.apps import api_client, running_app
from tests.support.nats_server import NatsServer

EXAMPLE = Path(__file__).resolve().parents[2] / "docs/examples/stream_consumer.py"


async def run_example(nats: NatsServer, *args: str) -> list[str]:
    env = {**os.environ, "NATS_URL": nats.url, "NATS_STREAM": STREAM}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(EXAMPLE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


async def test_the_consumer_example_reads_from_a_revision_and_resumes(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = stream_settings(f"sqlite+aiosqlite:///{tmp_path}/potok-state.db", nats_server)
    async with running_app(settings) as app, api_client(app) as client:
        for n in range(1, 11):
            await record_user(client, f"u{n}")
        await wait_for_messages(nats_server, 10)

        first = await run_example(
            nats_server, "--durable", "billing", "--after", "6", "--count", "4"
        )
        assert first == [f"{n} potok.entity.created.user user/u{n} -> online" for n in range(7, 11)]

        await record_user(client, "u11")
        await publish_custom(client)
        again = await run_example(
            nats_server, "--durable", "billing", "--after", "0", "--count", "2"
        )
        assert again == [
            "11 potok.entity.created.user user/u11 -> online",
            "12 potok.custom.deploy {'service': 'billing'}",
        ]


async def publish_custom(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/events", json={"type": "custom.deploy", "data": {"service": "billing"}}
    )
    assert response.status_code == 201, response.text
