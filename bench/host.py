"""The machine a bench run measured on, as the report's *Run* section lists it
(and the *Leases* section gives its load average again)."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _postgres_version() -> str:
    try:
        output = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return output.stdout.strip() or "?"


def load_average() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return " / ".join(f"{value:.2f}" for value in load) + " (1 / 5 / 15 min)"


def machine_info(backends: tuple[str, ...]) -> dict[str, str]:
    from bench.server import redis_version

    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "load average at start": load_average(),
        "libraries": ", ".join(
            f"{name} {_package_version(name)}"
            for name in ("fastapi", "uvicorn", "starlette", "pydantic", "sqlalchemy", "aiohttp")
        ),
        "sqlite": sqlite3.sqlite_version,
        "redis-server": redis_version(),
    }
    if "postgresql" in backends:
        info["postgresql"] = _postgres_version()
    return info
