"""A private `redis-server` process on a free port, for the cache, throttle and
metrics tests: tests kill and restart it to prove the service survives."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.support.ports import free_port

START_TIMEOUT_SECONDS = 10.0


class RedisServer:
    """One private redis-server; `kill` is SIGKILL, `start` reuses the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.db = 0  # the database the service uses on it (REDIS_GLOBAL_DB defaults to 1)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                with self.client() as probe:
                    probe.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=self.db, socket_timeout=2)
