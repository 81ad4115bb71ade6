"""The examples of a Markdown page (README.md, docs/*.md) that show what they
answer, run as a reader runs them: a ```bash block's `curl` commands (each shows
its status and body fragments after `# →`) and `.venv/bin/potok-state` commands
(with the block's `export`s), and a ```python block that shows its output after
`# →`. Fragments separated by `…` must appear in that order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPECTATION = re.compile(r"^# → (.*)$")
STATUS = re.compile(r"^(\d{3})\s*(.*)$")
HEADER = re.compile(r"^[A-Za-z-]+: ")
EXPORT = re.compile(r"^export ([A-Z_]+)=(\S+)")
CLI = ".venv/bin/potok-state "
SERVICE = "localhost:3002"


@dataclass(frozen=True, slots=True)
class Example:
    kind: str
    """`curl`, `cli` (a .venv/bin/potok-state command) or `python` (a whole block)."""
    code: str
    expected: str
    environment: dict[str, str] = field(default_factory=dict)
    """The `export`s above it in its block."""


def page_examples(path: Path) -> list[Example]:
    """The examples that show what they answer (`# → …`), in page order."""
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


def run_example(example: Example, hosts: Mapping[str, str], scratch: Path) -> None:
    """Run it with each `host:port` of `hosts` (the page's, as `localhost:3002`)
    replaced by where the test serves it; assert it answers as shown."""

    def served(text: str) -> str:
        for written, real in hosts.items():
            text = text.replace(written, real)
        return text

    environment = {k: v for k, v in os.environ.items() if not k.startswith("POTOK_")}
    environment.update(example.environment, POTOK_URL=f"http://{served(SERVICE)}")
    if example.kind in ("python", "cli"):
        program = (
            [sys.executable, "-c", served(example.code)]
            if example.kind == "python"
            else ["bash", "-c", example.code]
        )
        result = subprocess.run(
            program,
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
    command = served(example.code)
    headers_file, body_file = scratch / "headers", scratch / "body"
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
