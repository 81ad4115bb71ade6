"""The two commands of the README, as make runs them: `make run` installs what the
service needs without taking away the dev tools `make test` installed (and the
next `make test` then has nothing to reinstall)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLS = ("pytest", "ruff", "mypy", "schemathesis")


def test_make_run_keeps_the_dev_tools_installed() -> None:
    planned = subprocess.run(
        ["make", "--no-print-directory", "-n", "install"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [sync] = [line for line in planned.splitlines() if " sync " in line]
    # What that sync would do to this environment (the one `make test` made).
    would = subprocess.run(
        ["bash", "-c", f"{sync} --dry-run"],
        cwd=ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": ".venv"},
        capture_output=True,
        text=True,
        check=True,
    )
    report = would.stdout + would.stderr
    removed = re.findall(r"^ - ([\w-]+)==", report, re.MULTILINE)
    assert not set(removed) & set(DEV_TOOLS), report
