"""docs/external.md's walkthrough, as a reader follows it: the reference Admin
Service started with the page's command, the service started with the page's
settings, and the page's curl commands answering as shown (the Admin Service's
once replication has caught up)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.support.doc_examples import ROOT, SERVICE, Example, page_examples, run_example
from tests.support.hub import ServiceProcess, wait_ready
from tests.support.polling import eventually
from tests.support.ports import free_port

PAGE = ROOT / "docs" / "external.md"
ADMIN_COMMAND = ".venv/bin/python -m tests.support.admin_service "
SERVE_COMMAND = ".venv/bin/potok-state serve"
PAGE_ADMIN = ("localhost:3000", "127.0.0.1:3000")


def page_line(start: str | None = None, contains: str | None = None) -> str:
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if (start is None or line.startswith(start)) and (contains is None or contains in line):
            return line
    raise AssertionError(f"docs/external.md has no line {start or contains!r}")


@contextlib.asynccontextmanager
async def admin_service_as_written(port: int, db: Path) -> AsyncIterator[str]:
    arguments = shlex.split(page_line(start=ADMIN_COMMAND))
    arguments[arguments.index("--port") + 1] = str(port)
    arguments[arguments.index("--db") + 1] = str(db)
    process = await asyncio.create_subprocess_exec(*arguments, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:

            async def answers() -> bool:
                try:
                    return (await http.get(f"{url}/api/v1/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(answers, timeout=15, what="the reference Admin Service")
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def test_the_external_backend_walkthrough_works_as_written(tmp_path: Path) -> None:
    async with admin_service_as_written(free_port(), tmp_path / "admin.db") as admin:
        settings_and_command = shlex.split(page_line(contains=SERVE_COMMAND))
        settings = dict(
            word.split("=", 1) for word in settings_and_command if re.match(r"^[A-Z_]+=", word)
        )
        assert settings["STORAGE_BACKEND"] == "external"
        for page_host in PAGE_ADMIN:
            settings["EXTERNAL_DB_URL"] = settings["EXTERNAL_DB_URL"].replace(page_host, admin)
        port = free_port()
        server = ServiceProcess(
            ["serve", "--host", "127.0.0.1", "--port", str(port)], settings, tmp_path, "external"
        )
        await server.start()
        try:
            await wait_ready(server, port)
            hosts = {SERVICE: f"127.0.0.1:{port}", **dict.fromkeys(PAGE_ADMIN, admin)}
            examples = page_examples(PAGE)
            assert len(examples) == 3
            for example in examples:
                if SERVICE in example.code:  # the service answers at once
                    await asyncio.to_thread(run_example, example, hosts, tmp_path)
                    continue
                last: list[str] = []

                async def replicated(example: Example = example, last: list[str] = last) -> bool:
                    try:
                        await asyncio.to_thread(run_example, example, hosts, tmp_path)
                    except AssertionError as not_yet:
                        last[:] = [str(not_yet)]
                        return False
                    last.clear()
                    return True

                with contextlib.suppress(AssertionError):
                    await eventually(replicated, timeout=15, interval=0.2)
                assert not last, last[0]
        finally:
            await server.stop()
