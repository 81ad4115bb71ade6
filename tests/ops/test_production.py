"""Production mode refuses example or missing secrets at startup, naming the
setting; secrets never reach `potok-state config` output or the logs."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from potok_state.settings import Settings
from tests.conftest import POSTGRES_ADMIN_URL, postgres_admin, run_in_thread, sqlalchemy_url
from tests.support.hub import POTOK_STATE, http_service, remote_client
from tests.support.ports import free_port

REAL_WEBHOOK_SECRET = "whsec-ops-test-0c5a1d9e"
SECRETS = {
    "API_KEYS": "ops:sekret-api-key-7f3e2b",
    "WEBHOOK_SECRET_KEY": REAL_WEBHOOK_SECRET,
    "REDIS_LOCAL_PASSWORD": "sekret-redis-local-91a2",
    "REDIS_GLOBAL_PASSWORD": "sekret-redis-global-4d5c",
    "EXTERNAL_DB_API_KEY": "sekret-admin-service-8e7f",
}
SECRET_VALUES = [
    "sekret-api-key-7f3e2b",
    REAL_WEBHOOK_SECRET,
    "sekret-redis-local-91a2",
    "sekret-redis-global-4d5c",
    "sekret-admin-service-8e7f",
]
DB_PASSWORD = "sekret-db-password-2b6a"


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`potok-state …` with only `env` (plus PATH/HOME) and no `.env` to read."""
    base = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return subprocess.run(
        [str(POTOK_STATE), *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("configured", "named"),
    [
        ({"APP_ENV": "production", "WEBHOOK_SECRET_KEY": REAL_WEBHOOK_SECRET}, "API_KEYS"),
        ({"NODE_ENV": "production", "WEBHOOK_SECRET_KEY": REAL_WEBHOOK_SECRET}, "API_KEYS"),
        (
            {"APP_ENV": "production", "API_KEYS": " ", "WEBHOOK_SECRET_KEY": REAL_WEBHOOK_SECRET},
            "API_KEYS",
        ),
        (
            {
                "APP_ENV": "production",
                "API_KEYS": "gateway:gateway-service-key",
                "WEBHOOK_SECRET_KEY": REAL_WEBHOOK_SECRET,
            },
            "API_KEYS",
        ),
        ({"APP_ENV": "production", "API_KEYS": "ops:real-key"}, "WEBHOOK_SECRET_KEY"),
        (
            {
                "APP_ENV": "production",
                "API_KEYS": "unnamed-but-long-enough-key",
                "WEBHOOK_SECRET_KEY": REAL_WEBHOOK_SECRET,
            },
            "must be named",
        ),
        (
            {
                "APP_ENV": "production",
                "API_KEYS": "ops:short",
                "WEBHOOK_SECRET_KEY": REAL_WEBHOOK_SECRET,
            },
            "shorter than 16",
        ),
        (
            {"APP_ENV": "production", "API_KEYS": SECRETS["API_KEYS"], "WEBHOOK_SECRET_KEY": "x"},
            "WEBHOOK_SECRET_KEY must be at least 16",
        ),
        (
            {
                "NODE_ENV": "production",
                "API_KEYS": "ops:real-key",
                "WEBHOOK_SECRET_KEY": "change-me",
            },
            "WEBHOOK_SECRET_KEY",
        ),
    ],
)
def test_production_refuses_to_start(
    tmp_path: Path, configured: dict[str, str], named: str
) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db", **configured}
    result = run_cli("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db").exists()  # refused before touching anything


def test_production_starts_with_real_secrets(tmp_path: Path) -> None:
    env = {"APP_ENV": "production", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db", **SECRETS}
    result = run_cli("config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["APP_ENV"] == {"value": "production", "source": "environment"}


def test_settings_refusal_names_the_setting() -> None:
    with pytest.raises(ValidationError, match="API_KEYS"):
        Settings.model_validate({"app_env": "production"})


def test_config_output_masks_every_secret(tmp_path: Path) -> None:
    env = {
        **SECRETS,
        "DATABASE_URL": f"postgresql+asyncpg://potok:{DB_PASSWORD}@127.0.0.1:5432/potok",
        "REDIS_GLOBAL_ENABLED": "true",
    }
    result = run_cli("config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for secret in [*SECRET_VALUES, DB_PASSWORD]:
        assert secret not in output
    effective = {name: item["value"] for name, item in json.loads(result.stdout).items()}
    assert effective["API_KEYS"] == "ops:********"
    assert effective["WEBHOOK_SECRET_KEY"] == "********"
    assert effective["REDIS_GLOBAL_PASSWORD"] == "********"
    assert effective["EXTERNAL_DB_API_KEY"] == "********"
    assert effective["DATABASE_URL"] == "postgresql+asyncpg://potok:***@127.0.0.1:5432/potok"
    assert effective["WEBHOOK_DELIVERY_TIMEOUT"] == 30_000
    assert effective["APP_ENV"] == "development"


async def test_no_secret_in_the_logs_of_a_running_service(
    tmp_path: Path, postgres_url: str
) -> None:
    """Production mode, debug logging, PostgreSQL with a password in its URL,
    right and wrong keys, a webhook secret: none of them is ever logged."""
    # PostgreSQL trusts local connections, so the password is carried but unused.
    database_url = make_url(postgres_url).set(password=DB_PASSWORD)
    env = {
        **SECRETS,
        "APP_ENV": "production",
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "json",
    }
    subscription_secret = "whsec_sekret-subscription-5c4b"
    nul_secret = "whsec_sekret-nul-subscription-9e1f"
    port = free_port()
    async with http_service(port, env, tmp_path) as server, remote_client(port) as client:
        client.headers["x-api-key"] = "sekret-api-key-7f3e2b"
        recorded = await client.post(
            "/api/v1/states/task", json={"entityId": "secret-1", "status": "created"}
        )
        assert recorded.status_code in (200, 201), recorded.text
        subscribed = await client.post(
            "/api/v1/webhooks/subscriptions",
            json={
                "url": "https://hooks.example.com/potok",
                "events": ["*"],
                "secret": subscription_secret,
            },
        )
        assert subscribed.status_code == 201, subscribed.text
        # NUL in a text field used to fail inside PostgreSQL, whose error was
        # logged with the statement's values: the secret with it.
        for field in ("description", "secret"):
            poisoned = await client.post(
                "/api/v1/webhooks/subscriptions",
                json={
                    "url": "https://hooks.example.com/potok",
                    "events": ["*"],
                    "secret": nul_secret,
                    field: "bad\x00value" if field == "description" else nul_secret + "\x00",
                },
            )
            assert poisoned.status_code == 422, poisoned.text
        wrong = await client.get(
            "/api/v1/states/task/secret-1", headers={"x-api-key": "sekret-api-key-7f3e2b!"}
        )
        assert wrong.status_code == 401
        assert (await client.get("/health")).status_code == 200
    log = server.log
    assert '"event": "http.request"' in log or '"event":"http.request"' in log
    for secret in [*SECRET_VALUES, DB_PASSWORD, subscription_secret, nul_secret]:
        assert secret not in log, secret


def test_config_says_where_each_value_came_from(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "PORT=4111\n# a comment\nexport LOG_LEVEL=warning\nNODE_ENV=test\n"
    )
    result = run_cli("config", env={"THROTTLE_LIMIT": "7"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["PORT"] == {"value": 4111, "source": ".env"}
    assert effective["THROTTLE_LIMIT"] == {"value": 7, "source": "environment"}
    assert effective["WEBHOOK_MAX_RETRIES"] == {"value": 3, "source": "default"}
    assert effective["API_KEYS"] == {"value": "gateway:********", "source": "default"}
    # Set by its other name.
    assert effective["APP_ENV"] == {"value": "test", "source": ".env"}
    # The value in force: allowed outside production, when not set.
    assert effective["WEBHOOK_ALLOW_PRIVATE_TARGETS"] == {"value": True, "source": "default"}
    production = run_cli("config", env={"NODE_ENV": "production", **SECRETS}, cwd=tmp_path)
    assert json.loads(production.stdout)["APP_ENV"] == {
        "value": "production",
        "source": "environment",
    }
    allowed = json.loads(production.stdout)["WEBHOOK_ALLOW_PRIVATE_TARGETS"]
    assert allowed == {"value": False, "source": "default"}


def test_config_check_names_what_is_wrong(tmp_path: Path) -> None:
    loose = run_cli("config", "--check", env={"EXTERNAL_DB_URL": "http://admin:3000"}, cwd=tmp_path)
    assert loose.returncode == 1
    assert "unused: EXTERNAL_DB_URL is set" in loose.stdout
    assert "production would refuse: API_KEYS must be set" in loose.stdout
    # The example secret is in use: production refuses it, but it is not unused.
    assert "WEBHOOK_SECRET_KEY must be set to a real secret" in loose.stdout
    assert "unused: WEBHOOK_SECRET_KEY" not in loose.stdout
    idle = run_cli(
        "config",
        "--check",
        env={
            "DB_CONNECTION_TIMEOUT": "5000",
            "DB_RETRY_ATTEMPTS": "1",
            "REDIS_GLOBAL_ENABLED": "false",
            "REDIS_GLOBAL_HOST": "redis.example.com",
        },
        cwd=tmp_path,
    )
    assert idle.returncode == 1
    assert (
        "unused: DB_CONNECTION_TIMEOUT, DB_RETRY_ATTEMPTS are set but STORAGE_BACKEND=sql"
        in idle.stdout
    )
    assert "unused: REDIS_GLOBAL_HOST is set but REDIS_GLOBAL_ENABLED=false" in idle.stdout
    ready = run_cli("config", "--check", env={"APP_ENV": "production", **SECRETS}, cwd=tmp_path)
    # Among SECRETS, EXTERNAL_DB_API_KEY does nothing under SQL storage, and the
    # Redis passwords nothing while their tiers are off.
    assert ready.returncode == 1
    assert "unused: EXTERNAL_DB_API_KEY is set" in ready.stdout
    assert "unused: REDIS_LOCAL_PASSWORD is set but REDIS_LOCAL_ENABLED=false" in ready.stdout
    clean = {
        k: v
        for k, v in SECRETS.items()
        if k not in {"EXTERNAL_DB_API_KEY", "REDIS_LOCAL_PASSWORD", "REDIS_GLOBAL_PASSWORD"}
    }
    valid = run_cli("config", "--check", env={"APP_ENV": "production", **clean}, cwd=tmp_path)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "the configuration is valid" in valid.stdout


def test_serve_on_a_schema_that_is_not_current_exits_with_the_reason(
    tmp_path: Path,
) -> None:
    name = f"potok_unmigrated_{uuid.uuid4().hex[:10]}"
    run_in_thread(postgres_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = sqlalchemy_url(f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}")
        result = run_cli(
            "serve", "--port", str(free_port()), env={"DATABASE_URL": url}, cwd=tmp_path
        )
    finally:
        run_in_thread(postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    assert result.returncode == 3, result.stderr
    assert "run `potok-state migrate` first" in result.stderr
    assert "service.started" not in result.stderr
