"""A private `nats-server -js` process on a free port with its own store
directory, for the event stream tests: tests kill and restart it to prove
nothing is lost, and read the stream back with nats-py."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as Nats
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from tests.support.ports import free_port

START_TIMEOUT_SECONDS = 10.0


class NatsServer:
    """One private JetStream-enabled nats-server; `kill` is SIGKILL, `start`
    reuses the same port and store directory (the stream survives)."""

    def __init__(self, workdir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.workdir / "nats-server.log").open("ab")
        self.process = subprocess.Popen(
            [
                "nats-server",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.workdir / "store"),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if probe.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start on {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    sequence: int
    subject: str
    headers: dict[str, str]
    body: bytes


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Nats]:
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        yield client
    finally:
        await client.close()


async def stream_messages(url: str, stream: str) -> list[StoredMessage]:
    """Every message the stream holds, in stream order, read one by one (no
    consumer: reading changes nothing)."""
    async with connected(url) as client:
        js = client.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return []
        found: list[StoredMessage] = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                message: RawStreamMsg = await js.get_msg(stream, sequence)
            except NotFoundError:
                continue
            found.append(
                StoredMessage(
                    sequence=sequence,
                    subject=str(message.subject),
                    headers=dict(message.headers or {}),
                    body=message.data or b"",
                )
            )
        return found


async def stream_count(url: str, stream: str) -> int:
    async with connected(url) as client:
        try:
            info = await client.jetstream().stream_info(stream)
        except NotFoundError:
            return 0
        return int(info.state.messages)
