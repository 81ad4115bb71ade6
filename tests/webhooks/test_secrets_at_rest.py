"""Subscription secrets are encrypted at rest with a key derived from
WEBHOOK_SECRET_KEY (docs/webhooks.md, "Secrets at rest")."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sqlite3
import subprocess
from pathlib import Path

import asyncpg
import pytest

from potok_state.webhooks.sealing import SecretKeyMismatch
from tests.conftest import asyncpg_dsn
from tests.support.hub import POTOK_STATE, in_process, record, subscribe, webhook_settings
from tests.support.ports import free_port
from tests.support.receivers import Receiver

SECRET = "a-plain-secret-nobody-may-read"
SERVICE_KEY = "the-first-service-key-0123"
NEW_SERVICE_KEY = "the-second-service-key-456"


def signed_with(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def stored_secrets(database_url: str) -> list[str]:
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        with sqlite3.connect(path) as connection:
            return [
                row[0] for row in connection.execute("SELECT secret FROM webhook_subscriptions")
            ]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [
            row[0] for row in await connection.fetch("SELECT secret FROM webhook_subscriptions")
        ]
    finally:
        await connection.close()


async def store_in_the_clear(database_url: str, secret: str) -> None:
    """What a row written before secrets were encrypted holds."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE webhook_subscriptions SET secret = ?", (secret,))
        return
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("UPDATE webhook_subscriptions SET secret = $1", secret)
    finally:
        await connection.close()


def database_files(directory: Path) -> dict[str, bytes]:
    """The SQLite file and its journal files, as bytes."""
    return {path.name: path.read_bytes() for path in directory.glob("potok-state.db*")}


async def test_the_secret_is_not_in_the_sqlite_file(tmp_path: Path, receiver: Receiver) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/potok-state.db"
    async with in_process(webhook_settings(database_url)) as hub:
        await subscribe(hub, receiver.url(), secret=SECRET)
        await record(hub, "task", "t1", "created")
        [delivery] = await receiver.wait_for(1)
        assert delivery.headers["x-webhook-signature"] == signed_with(SECRET, delivery.body)
    files = database_files(tmp_path)
    assert files
    for name, content in files.items():
        assert SECRET.encode() not in content, name
    [stored] = await stored_secrets(database_url)
    assert stored.startswith("enc:v1:")


async def test_secrets_stored_in_the_clear_are_encrypted_at_startup(
    database_url: str, receiver: Receiver
) -> None:
    settings = webhook_settings(database_url, secret_key=SERVICE_KEY)
    async with in_process(settings) as hub:
        await subscribe(hub, receiver.url(), secret="replaced-below-by-an-old-row")
    await store_in_the_clear(database_url, SECRET)

    async with in_process(settings) as hub:
        assert [s.startswith("enc:v1:") for s in await stored_secrets(database_url)] == [True]
        await record(hub, "task", "t1", "created")
        [delivery] = await receiver.wait_for(1)
        assert delivery.headers["x-webhook-signature"] == signed_with(SECRET, delivery.body)


async def test_a_changed_service_key_needs_the_previous_one(
    database_url: str, receiver: Receiver
) -> None:
    async with in_process(webhook_settings(database_url, secret_key=SERVICE_KEY)) as hub:
        await subscribe(hub, receiver.url(), secret=SECRET)
    [before] = await stored_secrets(database_url)

    with pytest.raises(SecretKeyMismatch, match="WEBHOOK_PREVIOUS_SECRET_KEY"):
        async with in_process(webhook_settings(database_url, secret_key=NEW_SERVICE_KEY)):
            pytest.fail("the service started with secrets it cannot decrypt")
    assert await stored_secrets(database_url) == [before]

    rotated = webhook_settings(
        database_url, secret_key=NEW_SERVICE_KEY, previous_secret_key=SERVICE_KEY
    )
    async with in_process(rotated) as hub:
        [after] = await stored_secrets(database_url)
        assert after != before
        await record(hub, "task", "t1", "created")
        [delivery] = await receiver.wait_for(1)
        assert delivery.headers["x-webhook-signature"] == signed_with(SECRET, delivery.body)
    # From now on the new key alone opens them.
    async with in_process(webhook_settings(database_url, secret_key=NEW_SERVICE_KEY)):
        pass


@pytest.mark.parametrize("command", ["serve", "worker"])
async def test_the_commands_refuse_a_changed_key_in_one_line_naming_the_old_default(
    tmp_path: Path, receiver: Receiver, command: str
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/potok-state.db"
    # Subscribed under the default WEBHOOK_SECRET_KEY, then the operator sets one.
    async with in_process(webhook_settings(database_url)) as hub:
        await subscribe(hub, receiver.url(), secret=SECRET)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "WEBHOOK_", "APP_", "NODE_ENV"))
    }
    environment.update(DATABASE_URL=database_url, WEBHOOK_SECRET_KEY=NEW_SERVICE_KEY)
    arguments = ["--host", "127.0.0.1", "--port", str(free_port())] if command == "serve" else []

    result = await asyncio.to_thread(
        subprocess.run,
        [str(POTOK_STATE), command, *arguments],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("potok-state: the webhook secret of subscription sub_")
    assert "that of the example value 'development-secret'" in line
    assert "set WEBHOOK_PREVIOUS_SECRET_KEY to 'development-secret'" in line
