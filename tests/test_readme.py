"""The README's curl examples, run in order against a real server started the
way a new user starts it (SQLite, default settings): each answers with the
status and the fragments the README shows after `# →`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.settings import setting_names

ROOT = Path(__file__).resolve().parent.parent
EXPECTATION = re.compile(r"^# → (\d{3})\s*(.*)$")
HEADER = re.compile(r"^[A-Za-z-]+: ")


def readme_examples() -> list[tuple[str, int, str]]:
    """(curl command, expected status, expected text) in README order."""
    examples: list[tuple[str, int, str]] = []
    in_bash = False
    pending: str | None = None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            pending = None
            continue
        if not in_bash:
            continue
        if line.startswith("curl "):
            pending = line
            continue
        match = EXPECTATION.match(line)
        if match and pending is not None:
            examples.append((pending, int(match.group(1)), match.group(2)))
            pending = None
    return examples


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("API_KEYS", "DATABASE_URL", "REDIS_", "WEBHOOK_", "APP_ENV"))
    }
    env.update(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/readme.db", LOG_LEVEL="warning")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "potok_state.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health/liveness").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_readme_has_examples() -> None:
    assert len(readme_examples()) >= 10


def test_every_readme_curl_example_answers_as_shown(server: str, tmp_path: Path) -> None:
    for command, status, expected in readme_examples():
        command = command.replace("localhost:3002", server)
        headers_file, body_file = tmp_path / "headers", tmp_path / "body"
        capture = f" -s -o {body_file} -D {headers_file} -w '%{{http_code}}'"
        result = subprocess.run(
            ["bash", "-c", command + capture],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        headers, body = headers_file.read_text().lower(), body_file.read_text()
        context = f"{command}\n→ {result.stdout}\n{headers}\n{body}"
        assert result.stdout == str(status), context
        if HEADER.match(expected):
            assert expected.lower() in headers, context
            continue
        position = 0
        for fragment in (part.strip() for part in expected.split("…")):
            found = body.find(fragment, position)
            assert found >= 0, f"expected {fragment!r} in order\n{context}"
            position = found + len(fragment)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Configuration") :]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    for group, suffixes in re.findall(r"`([A-Z_]+)_HOST` / `((?:_[A-Z]+`(?: / `)?)+)", table):
        documented.update(group + s for s in re.findall(r"_[A-Z]+", suffixes))
        documented.add(group + "_HOST")
    missing = sorted(setting_names() - documented)
    assert not missing, f"settings missing from the README table: {missing}"
