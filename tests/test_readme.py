"""The README's examples, run in order against a real server started the way a
new user starts it (SQLite, default settings): each curl command answers with
the status and the fragments the README shows after `# →`, each
`.venv/bin/potok-state` command (with the `export`s of its block) and each
Python block that shows its output print those fragments."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.settings import setting_names

ROOT = Path(__file__).resolve().parent.parent
EXPECTATION = re.compile(r"^# → (.*)$")
STATUS = re.compile(r"^(\d{3})\s*(.*)$")
HEADER = re.compile(r"^[A-Za-z-]+: ")
EXPORT = re.compile(r"^export ([A-Z_]+)=(\S+)")
CLI = ".venv/bin/potok-state "


@dataclass(frozen=True, slots=True)
class Example:
    kind: str
    """`curl`, `cli` (a .venv/bin/potok-state command) or `python` (a whole block)."""
    code: str
    expected: str
    environment: dict[str, str] = field(default_factory=dict)
    """The `export`s above it in its block."""


def readme_examples(path: Path = ROOT / "README.md") -> list[Example]:
    """The examples that show what they answer (`# → …`), in order."""
    examples: list[Example] = []
    language: str | None = None
    block: list[str] = []
    exports: dict[str, str] = {}
    pending: tuple[str, str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            language = None if language is not None else line.strip().removeprefix("```")
            block, exports, pending = [], {}, None
            continue
        expectation = EXPECTATION.match(line)
        if language == "python":
            if expectation:
                examples.append(Example("python", "\n".join(block), expectation.group(1)))
            block.append(line)
        elif language == "bash":
            if export := EXPORT.match(line):
                exports[export.group(1)] = export.group(2)
            elif line.startswith("curl "):
                pending = ("curl", line)
            elif line.startswith(CLI):
                pending = ("cli", line)
            elif expectation and pending is not None:
                kind, command = pending
                examples.append(Example(kind, command, expectation.group(1), dict(exports)))
                pending = None
    return examples


def in_order(text: str, expected: str, context: str) -> None:
    position = 0
    for fragment in (part.strip() for part in expected.split("…")):
        found = text.find(fragment, position)
        assert found >= 0, f"expected {fragment!r} in order\n{context}"
        position = found + len(fragment)


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
    kinds = [example.kind for example in readme_examples()]
    assert kinds.count("curl") >= 10
    assert "cli" in kinds
    assert "python" in kinds


def test_every_readme_example_answers_as_shown(server: str, tmp_path: Path) -> None:
    for example in readme_examples():
        run_example(example, server, tmp_path)


def run_example(example: Example, server: str, tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("POTOK_")}
    environment.update(example.environment, POTOK_URL=f"http://{server}")
    if example.kind == "python":
        code = example.code.replace("http://localhost:3002", f"http://{server}")
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        context = f"{code}\n→ {result.stdout}{result.stderr}"
        assert result.returncode == 0, context
        in_order(result.stdout, example.expected, context)
        return
    if example.kind == "cli":
        result = subprocess.run(
            ["bash", "-c", example.code],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        context = f"{example.code}\n→ {result.stdout}{result.stderr}"
        assert result.returncode == 0, context
        in_order(result.stdout, example.expected, context)
        return
    command = example.code.replace("localhost:3002", server)
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
    status = STATUS.match(example.expected)
    assert status is not None, f"a curl example shows its status: {example.expected!r}"
    assert result.stdout == status.group(1), context
    expected = status.group(2)
    if HEADER.match(expected):
        assert expected.lower() in headers, context
        return
    in_order(body, expected, context)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Configuration") :]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    for group, suffixes in re.findall(r"`([A-Z_]+)_HOST` / `((?:_[A-Z]+`(?: / `)?)+)", table):
        documented.update(group + s for s in re.findall(r"_[A-Z]+", suffixes))
        documented.add(group + "_HOST")
    missing = sorted(setting_names() - documented)
    assert not missing, f"settings missing from the README table: {missing}"
