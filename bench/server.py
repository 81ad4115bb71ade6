"""What the bench runs against: a throwaway database, an optional private
redis-server, and the real service started as a subprocess (`potok-state serve`,
one uvicorn worker or `--workers N`; `potok-state worker` for webhook
delivery), always stopped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg

from bench.load import ProcStat, process_tree, read_stat

POSTGRES_ADMIN_DSN = os.environ.get(
    "POTOK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BENCH_API_KEY = "bench-key"
REPOSITORY = Path(__file__).resolve().parents[1]

# Only these reach the service: a developer's shell or `.env` must not change
# what is measured (the service runs in an empty temp directory for the same reason).
_PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


class BenchSetupError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- databases ------------------------------------------------------------------


@asynccontextmanager
async def sqlite_database(workdir: Path) -> AsyncIterator[str]:
    yield f"sqlite+aiosqlite:///{workdir / 'bench.db'}"


async def _postgres_admin(statement: str) -> str:
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchSetupError(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN} "
            f"(set POTOK_BENCH_POSTGRES_URL): {exc}"
        ) from exc
    try:
        if statement.lstrip().upper().startswith("SELECT"):
            return str(await connection.fetchval(statement))
        await connection.execute(statement)
        return ""
    finally:
        await connection.close()


async def postgres_version() -> str:
    return await _postgres_admin("SELECT current_setting('server_version')")


async def migrate(database_url: str, workdir: Path) -> float:
    """`potok-state migrate` on the store; seconds it took."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "potok_state.cli",
        "migrate",
        env=service_env({"DATABASE_URL": database_url}),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise BenchSetupError(f"potok-state migrate failed:\n{output.decode()[-2000:]}")
    return time.perf_counter() - started


@asynccontextmanager
async def postgres_database(workdir: Path) -> AsyncIterator[str]:
    """A fresh database, migrated with `potok-state migrate`, dropped afterwards."""
    name = f"potok_bench_{uuid.uuid4().hex[:12]}"
    await _postgres_admin(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    try:
        await migrate(url, workdir)
        yield url
    finally:
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- redis ----------------------------------------------------------------------


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


def redis_version() -> str:
    found = shutil.which("redis-server")
    if found is None:
        return "not installed"
    output = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    for part in output.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return output.stdout.strip()


@asynccontextmanager
async def admin_service(workdir: Path) -> AsyncIterator[dict[str, str]]:
    """The reference Admin Service (tests/support/admin_service.py) on a free
    port, as the settings that point the service at it."""
    port, key = free_port(), "bench-admin-key"
    command = [sys.executable, "-m", "tests.support.admin_service", "--port", str(port)]
    command += ["--db", str(workdir / f"admin-{port}.db"), "--api-key", key]
    log_path = workdir / f"admin-{port}.log"
    process = _start_logged(command, log_path)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{url}/api/v1/health") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            else:
                raise BenchSetupError(f"the reference Admin Service did not start: {log_path}")
        yield {"EXTERNAL_DB_URL": url, "EXTERNAL_DB_API_KEY": key}
    finally:
        _stop(process, timeout=5)


@asynccontextmanager
async def redis_server(workdir: Path) -> AsyncIterator[int]:
    """A private, non-persistent redis-server on a free port."""
    import redis.asyncio as redis

    port = free_port()
    process = _start_redis(port, workdir)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            for _ in range(100):
                try:
                    if await client.ping():
                        break
                except redis.ConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise BenchSetupError(f"redis-server did not answer on port {port}")
        finally:
            await client.aclose()
        yield port
    finally:
        _stop(process, timeout=5)


def _start_logged(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT)


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def redis_stats(port: int) -> dict[str, int]:
    """Keys stored and keyspace hits/misses, to prove the service really used Redis."""
    import redis.asyncio as redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        info = await client.info("stats")
        keys = await client.dbsize()
    finally:
        await client.aclose()
    return {
        "keys": int(keys),
        "hits": int(info.get("keyspace_hits", 0)),
        "misses": int(info.get("keyspace_misses", 0)),
    }


# -- the service ----------------------------------------------------------------


def service_env(settings: Mapping[str, str]) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
    env.update(
        {
            "APP_ENV": "development",
            "API_KEYS": f"bench:{BENCH_API_KEY}",
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
            "THROTTLE_LIMIT": "0",
            "REDIS_LOCAL_ENABLED": "false",
            "REDIS_GLOBAL_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(settings)
    return env


def _stop(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGINT (uvicorn's supervisor passes it on to its workers as SIGTERM and
    waits for them); SIGKILL after `timeout`, then to any descendant left behind,
    each by pid and only if it is still the process that was started."""
    if process.poll() is not None:
        return
    descendants = process_tree(process.pid)[1:]
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _kill_leftovers(descendants, timeout=5)


def _kill_leftovers(started: list[ProcStat], *, timeout: float) -> None:
    def alive() -> list[ProcStat]:
        now = (read_stat(stat.pid) for stat in started)
        return [
            stat
            for stat, current in zip(started, now, strict=True)
            if current is not None and current.started == stat.started and current.state != "Z"
        ]

    deadline = time.monotonic() + timeout
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for stat in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stat.pid, signal.SIGKILL)


class ManagedProcess:
    """A service process the bench started: its pid (for CPU accounting) and log."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Service(ManagedProcess):
    def __init__(
        self, process: subprocess.Popen[bytes], base_url: str, log_path: Path, workers: int = 1
    ) -> None:
        super().__init__(process, log_path)
        self.base_url = base_url
        self.workers = workers


@asynccontextmanager
async def running_service(
    workdir: Path,
    settings: Mapping[str, str],
    *,
    profile_to: Path | None = None,
    workers: int = 1,
) -> AsyncIterator[Service]:
    """`potok-state serve --workers N` on a free port; yields once
    /health/liveness answers and, with N > 1, every worker process has started.

    With `profile_to`, the server runs under cProfile and writes its stats there
    on shutdown (SIGINT lets uvicorn stop cleanly, so the profile is complete);
    cProfile sees only the process it runs in, so it needs one worker."""
    if profile_to is not None and workers != 1:
        raise BenchSetupError("cProfile of the server needs --workers 1")
    port = free_port()
    command = [sys.executable]
    if profile_to is not None:
        command += ["-m", "cProfile", "-o", str(profile_to)]
    command += ["-m", "potok_state.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    log_path = workdir / f"server-{port}.log"
    process = _start_service(command, settings, workdir, log_path)
    service = Service(process, f"http://127.0.0.1:{port}", log_path, workers)
    try:
        await _wait_until_live(service)
        if workers > 1:
            await _wait_for_workers(service)
        yield service
    finally:
        _stop(process, timeout=30)


@asynccontextmanager
async def running_worker(
    workdir: Path, settings: Mapping[str, str]
) -> AsyncIterator[ManagedProcess]:
    """`potok-state worker` (webhook delivery only). It has no port to poll, so
    this only checks that it did not exit at once; the caller proves it works by
    a delivery. Stopped with SIGINT, which lets in-flight attempts finish."""
    command = [sys.executable, "-m", "potok_state.cli", "worker"]
    log_path = workdir / f"worker-{uuid.uuid4().hex[:8]}.log"
    process = _start_service(command, settings, workdir, log_path)
    worker = ManagedProcess(process, log_path)
    try:
        await asyncio.sleep(0.2)
        if process.poll() is not None:
            raise BenchSetupError(
                f"the worker exited with code {process.returncode}:\n{worker.log_tail()}"
            )
        yield worker
    finally:
        _stop(process, timeout=30)


def _start_service(
    command: list[str], settings: Mapping[str, str], workdir: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            command,
            env=service_env(settings),
            cwd=tempfile.mkdtemp(dir=workdir),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


async def _wait_until_live(service: Service, within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise BenchSetupError(
                    f"the service exited with code {service.process.returncode}:\n"
                    + service.log_tail()
                )
            try:
                async with session.get(service.base_url + "/health/liveness") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise BenchSetupError(
        f"the service did not become live in {within:.0f} s:\n{service.log_tail()}"
    )


def _is_uvicorn_worker(pid: int) -> bool:
    """uvicorn starts its workers with multiprocessing's spawn method; the
    resource tracker that multiprocessing may start as well is not a worker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"spawn_main" in cmdline.read()
    except OSError:
        return False


_IDLE_SAMPLES = 3
_SAMPLE_SECONDS = 0.2


async def _wait_for_workers(service: Service, within: float = 60) -> None:
    """Until every worker of `serve --workers N` has started.

    /health/liveness answers as soon as one worker serves, and nothing in an
    answer tells the workers apart, so this watches the processes instead:
    each of the N workers must be asleep and (nearly) idle for a few samples
    in a row. Starting (imports, app and database set-up) keeps a worker busy;
    once it serves, it only waits for connections."""
    deadline = time.monotonic() + within
    previous: dict[int, int] = {}
    quiet: dict[int, int] = {}
    workers: list[ProcStat] = []
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchSetupError(
                f"the service exited with code {service.process.returncode}:\n" + service.log_tail()
            )
        workers = [
            stat
            for stat in process_tree(service.pid)
            if stat.ppid == service.pid and _is_uvicorn_worker(stat.pid)
        ]
        for stat in workers:
            idle = stat.state == "S" and stat.ticks - previous.get(stat.pid, -10) <= 1
            quiet[stat.pid] = quiet.get(stat.pid, 0) + 1 if idle else 0
            previous[stat.pid] = stat.ticks
        if len(workers) >= service.workers and all(
            quiet[stat.pid] >= _IDLE_SAMPLES for stat in workers
        ):
            return
        await asyncio.sleep(_SAMPLE_SECONDS)
    if len(workers) < service.workers:
        raise BenchSetupError(
            f"serve --workers {service.workers}: {len(workers)} worker processes after "
            f"{within:.0f} s:\n{service.log_tail()}"
        )
    # All there but never idle: the machine is busy; the warm-up has to absorb it.
