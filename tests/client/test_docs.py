"""The README's Python client example and docs/examples/client_example.py run as
written against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.client.conftest import Service

ROOT = Path(__file__).resolve().parents[2]


def readme_client_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python client") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


async def run_python(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POTOK_URL": service.url, "POTOK_API_KEY": service.api_key}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_the_readme_example_runs(service: Service) -> None:
    code = readme_client_example()
    assert len(code.strip().splitlines()) <= 6
    result = await run_python(service, "-c", code.replace("http://localhost:3002", service.url))
    assert result.returncode == 0, result.stderr
    assert "['task_124']" in result.stdout


async def test_the_example_program_runs(service: Service) -> None:
    result = await run_python(service, str(ROOT / "docs/examples/client_example.py"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("registered billing-")
    assert lines[1].startswith("billing instances up: ['http://10.0.3.7:8080'")
    assert lines[2].startswith("refused: ")
    assert lines[2].endswith("(allowed: ['draining', 'down'])")
    assert [line.split()[1:] for line in lines[3:]] == [
        ["entity.updated", "draining"],
        ["entity.deleted", "None"],
    ]
