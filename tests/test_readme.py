"""The README's examples, run in order against a real server started the way a
new user starts it (SQLite, default settings): the curl commands, the
`.venv/bin/potok-state` commands and the Python block answer as the README shows
(tests/support/doc_examples.py)."""

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

from tests.support.doc_examples import ROOT, SERVICE, page_examples, run_example
from tests.support.ports import free_port
from tests.support.settings import setting_names

README = ROOT / "README.md"


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
    kinds = [example.kind for example in page_examples(README)]
    assert kinds.count("curl") >= 10
    assert "cli" in kinds
    assert "python" in kinds


def test_every_readme_example_answers_as_shown(server: str, tmp_path: Path) -> None:
    for example in page_examples(README):
        run_example(example, {SERVICE: server}, tmp_path)


def test_readme_documents_every_setting() -> None:
    readme = README.read_text(encoding="utf-8")
    table = readme[readme.index("## Configuration") :]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    for group, suffixes in re.findall(r"`([A-Z_]+)_HOST` / `((?:_[A-Z]+`(?: / `)?)+)", table):
        documented.update(group + s for s in re.findall(r"_[A-Z]+", suffixes))
        documented.add(group + "_HOST")
    missing = sorted(setting_names() - documented)
    assert not missing, f"settings missing from the README table: {missing}"
