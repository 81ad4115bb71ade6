"""`make docs-check`: the docs page as a browser shows it.

Starts the real service (SQLite in a temporary directory, on a free port), loads
/api-docs in headless Chromium driven over the Chrome DevTools Protocol (a
websocket, through aiohttp: no browser-automation dependency), waits until
Swagger UI has rendered, and checks that every operation of the OpenAPI document
and the Authorize button are on the page and that the hand-written response
examples are what an opened operation shows. Writes a screenshot of the whole
page to build/docs-check/api-docs.png, also when a check fails.

Exits 1 with the reason when anything is missing; Chromium comes from
scripts/install-chromium."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import sys
import tempfile
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "build" / "docs-check" / "api-docs.png"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DOCS_PATH = "/api-docs"
OPENAPI_PATH = "/api-docs/openapi.json"
STARTUP_SECONDS = 60.0
RENDER_SECONDS = 30.0
# Opened by the check: its documented answers must show the models' own examples.
EXAMPLE_OPERATION = ("POST", "/api/v1/states/{entity}")

JsonObject = dict[str, Any]


class CheckFailed(Exception):
    """What the docs page lacks (or why it could not be loaded)."""


def nothing() -> None:
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_until(
    what: str, seconds: float, ready: Callable[[], Awaitable[bool]], alive: Callable[[], None]
) -> None:
    deadline = time.monotonic() + seconds
    while not await ready():
        alive()
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what} within {seconds:g} s")
        await asyncio.sleep(0.1)


def still_running(process: Process, name: str, log: Path) -> Callable[[], None]:
    def check() -> None:
        if process.returncode is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise CheckFailed(f"{name} exited with {process.returncode}:\n{tail}")

    return check


async def start(command: list[str], log: Path, **options: Any) -> Process:
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            *command, stdout=output, stderr=asyncio.subprocess.STDOUT, **options
        )


async def stop(process: Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def running_service(work: Path, http: aiohttp.ClientSession) -> AsyncIterator[str]:
    """The service as `make run` starts it, on its own SQLite file and port. It runs
    in `work` with a clean environment, so no .env or shell setting changes it."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "DATABASE_URL": f"sqlite+aiosqlite:///{work}/potok-state.db",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
    }
    log = work / "service.log"
    serve = [str(Path(sys.executable).parent / "potok-state"), "serve"]
    process = await start(serve, log, cwd=work, env=env)
    try:

        async def ready() -> bool:
            try:
                async with http.get(f"{base_url}/health/readiness") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        alive = still_running(process, "the service", log)
        await wait_until("the service did not get ready", STARTUP_SECONDS, ready, alive)
        yield base_url
    finally:
        await stop(process)


class DevTools:
    """One page target over the Chrome DevTools Protocol: commands are answered in
    order; events that arrive meanwhile are kept in `events`."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.last_id = 0
        self.events: list[JsonObject] = []

    async def call(self, method: str, **params: object) -> JsonObject:
        self.last_id += 1
        await self.socket.send_json({"id": self.last_id, "method": method, "params": params})
        while True:
            message: JsonObject = await self.socket.receive_json(timeout=RENDER_SECONDS)
            if message.get("id") != self.last_id:
                self.events.append(message)
                continue
            if "error" in message:
                raise CheckFailed(f"{method}: {message['error']}")
            result: JsonObject = message.get("result", {})
            return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CheckFailed(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors of the page (a CSP refusal is one)."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(str(details.get("exception", {}).get("description") or details))
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
        return found


@asynccontextmanager
async def headless_chromium(work: Path, http: aiohttp.ClientSession) -> AsyncIterator[DevTools]:
    if not os.access(CHROMIUM, os.X_OK):
        raise CheckFailed(f"{CHROMIUM} not found: run scripts/install-chromium")
    profile = work / "chromium-profile"
    command = [
        CHROMIUM,
        "--headless",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",  # it picks one and writes it to DevToolsActivePort
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        "about:blank",
    ]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with it
    log = work / "chromium.log"
    process = await start(command, log)
    try:
        alive = still_running(process, "chromium", log)
        port_file = profile / "DevToolsActivePort"

        async def listening() -> bool:
            return port_file.exists() and len(port_file.read_text().splitlines()) >= 2

        await wait_until("chromium opened no DevTools port", STARTUP_SECONDS, listening, alive)
        devtools_url = f"http://127.0.0.1:{port_file.read_text().splitlines()[0]}"
        async with http.get(f"{devtools_url}/json/list") as response:
            targets: list[JsonObject] = await response.json()
        [page] = [target for target in targets if target["type"] == "page"]
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as connection:
            devtools = DevTools(connection)
            for domain in ("Page", "Runtime", "Log"):
                await devtools.call(f"{domain}.enable")
            yield devtools
    finally:
        await stop(process)


RENDERED = """(() => {
  const operations = [...document.querySelectorAll('.opblock')].map(op => [
    op.querySelector('.opblock-summary-method')?.textContent ?? '',
    op.querySelector('.opblock-summary-path')?.dataset.path ?? '',
  ]);
  return {
    operations,
    tags: [...document.querySelectorAll('.opblock-tag')].map(t => t.dataset.tag),
    authorize: document.querySelector('.btn.authorize') !== null,
    errors: document.querySelector('.errors-wrapper')?.textContent ?? null,
  };
})()"""

OPEN_OPERATION = """(async ([method, path]) => {
  const operation = [...document.querySelectorAll('.opblock')].find(op =>
    op.querySelector('.opblock-summary-method')?.textContent === method &&
    op.querySelector('.opblock-summary-path')?.dataset.path === path);
  if (!operation) return null;
  // Swagger UI 5 opens an operation from the button in its summary line.
  const summary = operation.querySelector('.opblock-summary-control');
  (summary ?? operation.querySelector('.opblock-summary')).click();
  for (let i = 0; i < 100; i++) {
    const responses = operation.querySelector('.responses-wrapper');
    if (responses?.querySelector('.microlight, .highlight-code')) return responses.innerText;
    await new Promise(done => setTimeout(done, 100));
  }
  return '';
})(%s)"""


def expected_operations(spec: JsonObject) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete", "head", "options"}
    }


def example_lines(spec: JsonObject) -> list[str]:
    """Lines of the StateView and ErrorBody examples, as the opened operation shows them."""
    schemas = spec["components"]["schemas"]
    state = schemas["StateView"]["examples"][0]
    error = schemas["ErrorBody"]["examples"][0]
    return [f'"createdAt": "{state["createdAt"]}"', f'"code": "{error["code"]}"']


async def screenshot(devtools: DevTools) -> None:
    """The whole page, not only the window: every operation is on it."""
    metrics = await devtools.call("Page.getLayoutMetrics")
    height = min(int(metrics["cssContentSize"]["height"]), 16_000)
    await devtools.call(
        "Emulation.setDeviceMetricsOverride",
        width=1280,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    shot = await devtools.call("Page.captureScreenshot", format="png")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))


async def check_docs_page(work: Path) -> list[str]:
    """What was checked, one line each; CheckFailed when something is missing."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        running_service(work, http) as base_url,
    ):
        async with http.get(base_url + OPENAPI_PATH) as response:
            spec: JsonObject = await response.json()
        expected = expected_operations(spec)
        async with headless_chromium(work, http) as devtools:
            await devtools.call("Page.navigate", url=base_url + DOCS_PATH)
            seen: JsonObject = {}

            async def rendered() -> bool:
                nonlocal seen
                seen = await devtools.evaluate(RENDERED)
                return bool(seen["authorize"]) and len(seen["operations"]) >= len(expected)

            try:
                await wait_until("Swagger UI did not render", RENDER_SECONDS, rendered, nothing)
            except CheckFailed as exc:
                await screenshot(devtools)
                problem = f"{exc}; on the page: {seen}; errors: {devtools.errors()}"
                raise CheckFailed(problem) from None
            answers = await devtools.evaluate(OPEN_OPERATION % list(EXAMPLE_OPERATION))
            await screenshot(devtools)
            shown = {(method, path) for method, path in seen["operations"]}
            problems = []
            if missing := sorted(expected - shown):
                problems.append(f"operations not shown: {missing}")
            if "states" not in seen["tags"]:
                problems.append(f"no 'states' section among {seen['tags']}")
            if seen["errors"]:
                problems.append(f"Swagger UI reports errors: {seen['errors']}")
            if errors := devtools.errors():
                problems.append(f"the page logged errors: {errors}")
            if answers is None:
                problems.append(f"operation {EXAMPLE_OPERATION} not found")
            elif absent := [line for line in example_lines(spec) if line not in answers]:
                problems.append(f"{EXAMPLE_OPERATION} does not show the examples {absent}")
            if problems:
                raise CheckFailed("; ".join(problems))
            states = sorted(path for method, path in shown if "/states" in path)
            return [
                f"Swagger UI rendered {len(shown)} operations in {len(seen['tags'])} sections "
                f"({', '.join(seen['tags'])}), {len(states)} of them under /states",
                "the Authorize button is there",
                f"{' '.join(EXAMPLE_OPERATION)} shows the hand-written response examples",
                f"screenshot: {SCREENSHOT.relative_to(ROOT)}",
            ]


def main() -> int:
    SCREENSHOT.unlink(missing_ok=True)  # what a failure leaves is from this run
    work = Path(tempfile.mkdtemp(prefix="potok-docs-check-"))
    try:
        checked = asyncio.run(check_docs_page(work))
    except CheckFailed as exc:
        print(f"docs-check FAILED: {exc}", file=sys.stderr)
        if SCREENSHOT.exists():
            print(f"docs-check: see {SCREENSHOT.relative_to(ROOT)}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in checked:
        print(f"docs-check: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
