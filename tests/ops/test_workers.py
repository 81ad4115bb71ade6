"""`potok-state serve --workers 2`, the real command: two worker processes
share the port, each with its own near cache, and a client never notices. A
write answered by one process is never followed by an older read from either
process, and a state deleted through one is gone on both (cli.py: the workers
share one table of revision floors, cache/floors.py).

Which process answers a connection is found out from /proc: the worker that
holds the server end of that TCP connection. A connection kept open is pinned
to its worker, so a write on one worker can be read back on the other on
purpose; fresh connections per request spread over both by chance. uvicorn
closes a connection idle for 5 s (`timeout_keep_alive`), so a pinned one is
kept busy while the test uses other connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import API_KEY
from tests.support.hub import ServiceProcess, service_env, wait_ready
from tests.support.polling import eventually
from tests.support.ports import free_port

WORKERS = 2
USERS = "/api/v1/states/user"
# Fresh connections: concurrent write-then-read loops, one entity each.
LOOPS = 4
ITERATIONS = 40
READS_PER_WRITE = 3
# Pinned connections: writes alternate between the workers.
CROSS_ITERATIONS = 60
DELETIONS = 10
PIN_ATTEMPTS = 200
# How often an otherwise idle pinned connection is used: well inside uvicorn's
# keep-alive timeout (5 s).
KEEP_OPEN_SECONDS = 1.0
# Concurrent PATCHes of one entity, per writer.
PATCHES = 20

Json = dict[str, Any]
Send = Callable[..., Awaitable[httpx.Response]]


# -- processes and sockets, from /proc ------------------------------------------------


def worker_pids(parent: int) -> set[int]:
    """The uvicorn worker processes of `parent` (multiprocessing spawn children;
    its resource tracker is left out)."""
    workers: set[int] = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            found = re.search(r"^PPid:\s*(\d+)$", status.read_text(), re.MULTILINE)
            if found is None or int(found.group(1)) != parent:
                continue
            if b"spawn_main" in (status.parent / "cmdline").read_bytes():
                workers.add(int(status.parent.name))
    return workers


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        state = re.search(r"^State:\s*(\S)", status, re.MULTILINE)
    except OSError:
        return False
    return state is not None and state.group(1) != "Z"


def server_socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server end of the loopback connection from `client_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], int(fields[9])
                if (
                    int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                    and inode
                ):
                    return inode
    return None


def socket_owner(pids: set[int], inode: int) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for descriptor in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(descriptor) == target:
                        return pid
    return None


def client_address(response: httpx.Response) -> tuple[str, int]:
    address: tuple[str, int] = response.extensions["network_stream"].get_extra_info("client_addr")
    return address


# -- the service ----------------------------------------------------------------------


@dataclass(slots=True)
class Served:
    port: int
    server: ServiceProcess
    workers: set[int]


@asynccontextmanager
async def serve_with_workers(database_url: str, workdir: Path) -> AsyncIterator[Served]:
    port = free_port()
    env = service_env(database_url, THROTTLE_LIMIT="0", LOG_LEVEL="warning")
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)],
        env,
        workdir,
        "workers",
    )
    await server.start()
    assert server.process is not None
    parent = server.process.pid
    workers: set[int] = set()
    try:
        await wait_ready(server, port)

        async def all_workers() -> set[int] | None:
            found = worker_pids(parent)
            return found if len(found) >= WORKERS else None

        workers = await eventually(all_workers, timeout=30, what="the worker processes")
        yield Served(port, server, workers)
    finally:
        await server.stop()
        # None of the workers is left behind, even when the test failed.
        lingering = {pid for pid in workers if alive(pid)}
        for pid in lingering:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # The workers end with their server (SIGTERM).
    assert not lingering, f"worker processes outlived the server: {lingering}"


@dataclass(slots=True)
class Pinned:
    """One kept-alive connection, so every request goes to the same worker."""

    pid: int
    client: httpx.AsyncClient
    address: tuple[str, int]

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, url, **kwargs)
        assert client_address(response) == self.address, "the pinned connection was replaced"
        return response


async def keep_open(pin: Pinned, stop: asyncio.Event) -> None:
    """Use the pinned connection at least every KEEP_OPEN_SECONDS, so the server
    never closes it as idle (its one-connection pool queues this behind the
    test's own requests, on the same connection)."""
    while not stop.is_set():
        body(await pin.request("GET", "/health/liveness"), 200)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), KEEP_OPEN_SECONDS)


@asynccontextmanager
async def pinned_connections(served: Served) -> AsyncIterator[dict[int, Pinned]]:
    """One open connection to each worker, kept open: new connections until
    every worker has accepted one."""
    pinned: dict[int, Pinned] = {}
    opened: list[httpx.AsyncClient] = []
    stop = asyncio.Event()
    keepers: list[asyncio.Task[None]] = []
    try:
        for _ in range(PIN_ATTEMPTS):
            client = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{served.port}",
                headers={"x-api-key": API_KEY},
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=30,
            )
            opened.append(client)
            response = await client.get("/health/liveness")
            assert response.status_code == 200, response.text
            address = client_address(response)
            inode = server_socket_inode(served.port, address[1])
            owner = None if inode is None else socket_owner(served.workers, inode)
            if owner is not None and owner not in pinned:
                pinned[owner] = Pinned(owner, client, address)
                keepers.append(asyncio.create_task(keep_open(pinned[owner], stop)))
                if len(pinned) == WORKERS:
                    break
            else:
                await client.aclose()
        assert set(pinned) == served.workers, (
            f"{PIN_ATTEMPTS} connections reached only workers {set(pinned)} of {served.workers}"
        )
        yield pinned
    finally:
        stop.set()
        # A keeper that failed (its connection was replaced) fails the test.
        kept = await asyncio.gather(*keepers, return_exceptions=True)
        for client in opened:
            await client.aclose()
    for outcome in kept:
        if isinstance(outcome, BaseException):
            raise outcome


@asynccontextmanager
async def fresh_connections(port: int) -> AsyncIterator[httpx.AsyncClient]:
    """A new TCP connection for every request, so requests spread over the
    workers (the kernel hands each connection to one of them)."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"x-api-key": API_KEY, "connection": "close"},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=30,
    ) as client:
        yield client


def body(response: httpx.Response, status: int) -> Json:
    assert response.status_code == status, response.text
    parsed: Json = response.json()
    return parsed


# -- the test -------------------------------------------------------------------------


async def test_two_workers_serve_one_coherent_state(database_url: str, tmp_path: Path) -> None:
    async with serve_with_workers(database_url, tmp_path) as served:
        assert len(served.workers) == WORKERS
        # Both workers serve: each accepted a connection and answers on it.
        async with (
            pinned_connections(served) as pinned,
            fresh_connections(served.port) as fresh,
        ):
            first, second = (pinned[pid] for pid in sorted(pinned))
            await writes_alternating_between_workers(first, second)
            await deletes_alternating_between_workers(first, second, fresh)
            await concurrent_writes_and_reads_on_fresh_connections(fresh)
            await concurrent_patches_through_both_workers_lose_nothing(first, second, fresh)


async def writes_alternating_between_workers(first: Pinned, second: Pinned) -> None:
    """Both near caches hold the current version; one worker writes; the other
    reads right after the answer, then the writer: both serve the new state."""
    created = await first.request("POST", USERS, json={"entityId": "cross", "status": "online"})
    version = body(created, 201)["version"]
    for iteration in range(CROSS_ITERATIONS):
        for pin in (first, second):
            read = await pin.request("GET", f"{USERS}/cross")
            assert body(read, 200)["version"] == version
        writer, other = (first, second) if iteration % 2 else (second, first)
        if iteration % 3:
            update = {"metadata": {"iteration": iteration}}
            written = await writer.request("PATCH", f"{USERS}/cross", json=update)
        else:
            status = ("offline", "busy", "online")[iteration // 3 % 3]
            written = await writer.request("PUT", f"{USERS}/cross", json={"status": status})
        state = body(written, 200)
        assert state["version"] == version + 1
        version = state["version"]
        for pin in (other, writer):
            read = await pin.request("GET", f"{USERS}/cross")
            assert body(read, 200) == state, f"stale read on worker {pin.pid}"


async def deletes_alternating_between_workers(
    first: Pinned, second: Pinned, fresh: httpx.AsyncClient
) -> None:
    """A state cached by both workers and deleted through one is 404 on both
    right after the answer (and on fresh connections); created again through
    the other worker, both serve the new state."""
    for number in range(DELETIONS):
        entity_id = f"gone-{number}"
        deleter, other = (first, second) if number % 2 else (second, first)
        created = await other.request(
            "POST", USERS, json={"entityId": entity_id, "status": "online"}
        )
        body(created, 201)
        for pin in (first, second):
            body(await pin.request("GET", f"{USERS}/{entity_id}"), 200)

        deleted = await deleter.request("DELETE", f"{USERS}/{entity_id}")
        assert deleted.status_code == 204, deleted.text

        for pin in (other, deleter):
            gone = await pin.request("GET", f"{USERS}/{entity_id}")
            assert gone.status_code == 404, f"worker {pin.pid} still serves {entity_id}"
        for _ in range(4):
            gone = await fresh.get(f"{USERS}/{entity_id}")
            assert gone.status_code == 404, gone.text

        again = await other.request("POST", USERS, json={"entityId": entity_id, "status": "busy"})
        state = body(again, 201)
        for pin in (deleter, other):
            read = await pin.request("GET", f"{USERS}/{entity_id}")
            assert body(read, 200) == state, f"worker {pin.pid} serves an old {entity_id}"


async def concurrent_writes_and_reads_on_fresh_connections(client: httpx.AsyncClient) -> None:
    """Loops on their own entities, each request on a new connection (so on
    either worker): every read after a write's answer has at least its version."""

    async def write_then_read(entity_id: str) -> None:
        created = await client.post(USERS, json={"entityId": entity_id, "status": "online"})
        version = body(created, 201)["version"]
        for iteration in range(ITERATIONS):
            written = await client.patch(
                f"{USERS}/{entity_id}", json={"metadata": {"iteration": iteration}}
            )
            state = body(written, 200)
            assert state["version"] > version
            version = state["version"]
            for _ in range(READS_PER_WRITE):
                read = body(await client.get(f"{USERS}/{entity_id}"), 200)
                assert read["version"] >= version, f"stale read of {entity_id}: {read}"
                assert read == state

    await asyncio.gather(*(write_then_read(f"loop-{n}") for n in range(LOOPS)))


async def concurrent_patches_through_both_workers_lose_nothing(
    first: Pinned, second: Pinned, fresh: httpx.AsyncClient
) -> None:
    """Three writers patch one entity at once, through each worker and through
    fresh connections: every PATCH is applied on top of all earlier ones."""
    created = await first.request("POST", USERS, json={"entityId": "merged", "status": "online"})
    body(created, 201)

    async def patch(prefix: str, send: Send) -> None:
        for number in range(PATCHES):
            update = {"metadata": {f"{prefix}{number}": number}}
            response = await send("PATCH", f"{USERS}/merged", json=update)
            state = body(response, 200)
            assert state["metadata"][f"{prefix}{number}"] == number

    await asyncio.gather(
        patch("a", first.request), patch("b", second.request), patch("c", fresh.request)
    )
    expected = {f"{prefix}{n}": n for prefix in "abc" for n in range(PATCHES)}
    for pin in (first, second):
        state = body(await pin.request("GET", f"{USERS}/merged"), 200)
        assert state["version"] == 1 + 3 * PATCHES
        assert state["metadata"] == expected, f"worker {pin.pid} lost an update"
