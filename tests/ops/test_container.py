"""docker-compose.yml and the Dockerfile, checked without a docker engine: the
compose file parses, every variable it gives the service is a real setting with
a valid value, and the image runs as a non-root user with a liveness healthcheck."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from potok_state.settings import Settings
from tests.support.settings import setting_names

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"serve", "worker", "migrate"}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return parsed


def service_environments() -> dict[str, dict[str, str]]:
    """The environment of each service that runs the potok-state image."""
    environments = {}
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith("potok-state") or "build" in service:
            environment = service.get("environment", {})
            if isinstance(environment, list):
                environment = dict(item.split("=", 1) for item in environment)
            environments[name] = {key: str(value) for key, value in environment.items()}
    return environments


def interpolate(value: str) -> str:
    """What compose substitutes, with a stand-in for variables the operator must set."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if operator in (":-", "-"):
            return argument
        if name == "API_KEYS":  # production wants named keys
            return "operator:stand-in-api-keys-value"
        return f"stand-in-{name.lower()}-value"

    return _INTERPOLATION.sub(substitute, value)


def test_setting_names_follow_the_design() -> None:
    names = setting_names()
    for name in (
        "PORT", "APP_ENV", "NODE_ENV", "APP_NAME", "LOG_LEVEL", "LOG_FORMAT", "DATABASE_URL",
        "API_KEYS", "STORAGE_BACKEND", "EXTERNAL_DB_URL", "EXTERNAL_DB_API_KEY",
        "DB_CONNECTION_TIMEOUT", "DB_RETRY_ATTEMPTS", "REDIS_LOCAL_HOST", "REDIS_GLOBAL_ENABLED",
        "REDIS_GLOBAL_PASSWORD", "WEBHOOK_SECRET_KEY", "WEBHOOK_RETRY_DELAY", "THROTTLE_LIMIT",
        "THROTTLE_TTL", "CACHE_STATE_TTL", "REQUEST_BODY_MAX_BYTES",
    ):  # fmt: skip
        assert name in names


def test_compose_runs_the_api_workers_postgres_and_both_redis_tiers() -> None:
    services = compose()["services"]
    assert {"state", "worker", "postgres", "redis-local", "redis-global"} <= set(services)
    for name in service_environments():
        command = services[name]["command"]
        assert command[0] == "potok-state"
        assert command[1] in COMMANDS
    assert services["state"]["command"][1] == "serve"
    assert services["worker"]["command"][1] == "worker"
    assert services["state"]["environment"]["WEBHOOK_EMBEDDED_WORKER"] == "false"


@pytest.mark.parametrize("service", sorted(service_environments()))
def test_every_compose_variable_is_a_valid_setting(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environment = service_environments()[service]
    unknown = set(environment) - setting_names()
    assert not unknown, f"{service} sets variables the service does not read: {sorted(unknown)}"

    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, interpolate(value))
    settings = Settings()  # production checks included
    assert settings.is_production
    assert settings.redis_global.enabled
    assert settings.redis_global.host == "redis-global"
    assert settings.database_url.startswith("postgresql+asyncpg://")


def test_image_is_slim_non_root_with_a_liveness_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert stages
    assert all(image.endswith("-slim") for image in stages)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0")
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.+)$", dockerfile, re.MULTILINE | re.DOTALL)
    assert healthcheck is not None
    assert "/health/liveness" in healthcheck.group(1)
    assert re.search(r'^CMD \["potok-state", "serve"\]', dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git"} <= set(ignored)
