"""Headless Chromium for the browser tests (the console, the docs page), driven
over the Chrome DevTools Protocol (a websocket, through aiohttp: no
browser-automation dependency, no Node).

The browser is Debian's chromium (/usr/bin/chromium, or $CHROMIUM), installed by
scripts/install-chromium; `make test` installs it when it is missing. A missing
browser fails the tests that need it, never skips them.

`Page` answers commands in order and keeps every event that arrives meanwhile:
console errors and uncaught exceptions (a CSP refusal is one), every request
the page made, and the JavaScript dialogs it opened, which it accepts (or
dismisses, `accept_dialogs`) as a person would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
STARTUP_SECONDS = 60.0
COMMAND_SECONDS = 30.0

JsonObject = dict[str, Any]


class BrowserError(Exception):
    pass


class Page:
    """One page target."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self._next_id = 0
        self.events: list[JsonObject] = []
        self.dialogs: list[str] = []
        self.accept_dialogs = True

    async def _send(self, method: str, params: JsonObject) -> int:
        self._next_id += 1
        await self.socket.send_json({"id": self._next_id, "method": method, "params": params})
        return self._next_id

    async def call(self, method: str, **params: object) -> JsonObject:
        waiting_for = await self._send(method, params)
        while True:
            message: JsonObject = await self.socket.receive_json(timeout=COMMAND_SECONDS)
            if message.get("id") == waiting_for:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: JsonObject = message.get("result", {})
                return result
            if "id" in message:
                continue  # the answer to a command sent from here without waiting
            self.events.append(message)
            if message.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(message["params"]["message"])
                await self._send("Page.handleJavaScriptDialog", {"accept": self.accept_dialogs})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 10.0, what: str = "") -> Any:  # noqa: ASYNC109
        """The expression's value once it is truthy; BrowserError after `timeout` s."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        errors = self.errors()
        raise BrowserError(
            f"waited {timeout:g} s for {what or expression}; last value {value!r}; "
            f"page errors: {errors}"
        )

    async def open(self, url: str) -> None:
        """Navigate and wait until the page (and its deferred scripts) loaded."""
        await self.call("Page.navigate", url=url)
        await self.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            what=f"{url} to load",
        )

    async def click(self, selector: str) -> None:
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({_js(selector)}); "
            "if (!e) return false; e.scrollIntoView(); e.click(); return true; })()"
        )
        if not found:
            raise BrowserError(f"nothing to click at {selector}")

    async def type_text(self, text: str) -> None:
        """Type into the focused element, as a keyboard would."""
        await self.call("Input.insertText", text=text)

    async def press(self, key: str, code: str | None = None, key_code: int = 0) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=code or key,
                windowsVirtualKeyCode=key_code,
                text="\r" if key == "Enter" and kind == "keyDown" else "",
            )

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )

    async def color_scheme(self, scheme: str) -> None:
        await self.call(
            "Emulation.setEmulatedMedia",
            features=[{"name": "prefers-color-scheme", "value": scheme}],
        )

    async def screenshot(self, path: Path, *, width: int = 1280) -> None:
        """The whole page at `width` CSS pixels."""
        await self.viewport(width, 800, mobile=width < 600)
        metrics = await self.call("Page.getLayoutMetrics")
        height = min(int(metrics["cssContentSize"]["height"]) + 1, 8000)
        await self.viewport(width, height, mobile=width < 600)
        shot = await self.call("Page.captureScreenshot", format="png")
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))
        await self.viewport(1280, 900)

    async def cookies(self) -> list[JsonObject]:
        found: list[JsonObject] = (await self.call("Network.getCookies"))["cookies"]
        return found

    def requested_urls(self) -> list[str]:
        return [
            event["params"]["request"]["url"]
            for event in self.events
            if event.get("method") == "Network.requestWillBeSent"
        ]

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
            elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                found.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
        return found


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _js(value: str) -> str:
    return json.dumps(value)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def headless_chromium(work: Path) -> AsyncIterator[Page]:
    """Chromium with a fresh profile in `work`, and its one page."""
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserError(f"{CHROMIUM} not found: run scripts/install-chromium (make test does)")
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
        "--disable-background-networking",
        "--hide-scrollbars",
        "--window-size=1280,900",
        "about:blank",
    ]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with it
    log = (work / "chromium.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *command, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + STARTUP_SECONDS
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if process.returncode is not None or time.monotonic() > deadline:
                raise BrowserError(
                    f"chromium opened no DevTools port: {(work / 'chromium.log').read_text()}"
                )
            await asyncio.sleep(0.1)
        devtools = f"http://127.0.0.1:{port_file.read_text().splitlines()[0]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{devtools}/json/list") as response:
                targets: list[JsonObject] = await response.json()
            [target] = [t for t in targets if t["type"] == "page"]
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                page = Page(socket)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await page.call(f"{domain}.enable")
                yield page
    finally:
        await _stop(process)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
