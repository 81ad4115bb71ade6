"""`potok-state states …` and `webhooks …` as a user runs them: the real command,
against the real server, with POTOK_URL/POTOK_API_KEY or flags; tables, `--json`,
and exit codes that say what went wrong."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

from potok_state.client.commands import ExitCode
from tests.client.conftest import Service
from tests.support.hub import POTOK_STATE
from tests.support.polling import eventually
from tests.support.ports import free_port


async def potok(
    service: Service | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    if service is not None:
        environment.setdefault("POTOK_URL", service.url)
        environment.setdefault("POTOK_API_KEY", service.api_key)
    return await asyncio.to_thread(
        subprocess.run,
        [str(POTOK_STATE), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_states_set_get_history_query(service: Service) -> None:
    entity = f"cli{uuid.uuid4().hex[:6]}"
    created = parsed(
        await potok(
            service, "states", "set", entity, "a", "new", "--metadata", '{"zone":"eu"}', "--json"
        )
    )
    assert (created["entityId"], created["status"], created["version"]) == ("a", "new", 1)
    await potok(service, "states", "set", entity, "b", "new")
    moved = await potok(service, "states", "set", entity, "a", "done", "--reason", "shipped")
    assert moved.returncode == 0, moved.stderr
    assert "status: done" in moved.stdout.splitlines()

    got = parsed(await potok(service, "states", "get", entity, "a", "--json"))
    assert (got["status"], got["metadata"], got["version"]) == ("done", {"zone": "eu"}, 2)
    then = str(created["revision"])
    assert parsed(
        await potok(service, "states", "get", entity, "a", "--as-of", then, "--json")
    ) == (created)
    by_time = await potok(service, "states", "get", entity, "a", "--as-of", created["updatedAt"])
    assert "status: new" in by_time.stdout.splitlines(), by_time.stderr
    bad = await potok(service, "states", "get", entity, "a", "--as-of", "soon")
    assert bad.returncode == 2

    history = parsed(await potok(service, "states", "history", entity, "a", "--json"))
    assert [(h["previousStatus"], h["newStatus"]) for h in history] == [
        (None, "new"),
        ("new", "done"),
    ]
    table = (await potok(service, "states", "history", entity, "a")).stdout.splitlines()
    assert table[0].split() == [
        "revision",
        "version",
        "event",
        "previousStatus",
        "newStatus",
        "actor",
        "changedAt",
    ]
    assert table[2].split()[2:6] == ["entity.updated", "new", "done", "gateway"]

    everything = parsed(
        await potok(service, "states", "query", entity, "--sort", "entityId", "--json")
    )
    assert [s["entityId"] for s in everything] == ["a", "b"]
    # A descending sort as docs/client.md writes it, and in the `=` form.
    for sort, expected in (
        (["--sort", "-entityId"], ["b", "a"]),
        (["--sort=-entityId"], ["b", "a"]),
        (["--sort", "-updatedAt"], ["a", "b"]),  # `a` changed last
    ):
        descending = parsed(await potok(service, "states", "query", entity, *sort, "--json"))
        assert [s["entityId"] for s in descending] == expected, sort
    eu = parsed(await potok(service, "states", "query", entity, "--where", "zone=eu", "--json"))
    assert [s["entityId"] for s in eu] == ["a"]
    one = parsed(await potok(service, "states", "query", entity, "--limit", "1", "--json"))
    assert len(one) == 1
    rows = (await potok(service, "states", "query", entity, "--status", "new")).stdout.splitlines()
    assert rows[0].split()[:2] == ["entityId", "status"]
    assert [row.split()[:3] for row in rows[1:]] == [["b", "new", "1"]]


async def test_exit_codes(service: Service) -> None:
    task = f"t{uuid.uuid4().hex[:6]}"
    assert (await potok(service, "states", "set", "task", task, "in_progress")).returncode == 0
    assert (await potok(service, "states", "set", "task", task, "completed")).returncode == 0

    refused = await potok(service, "states", "set", "task", task, "in_progress")
    assert refused.returncode == ExitCode.CONFLICT
    assert "409 invalid_transition" in refused.stderr
    stale = await potok(service, "states", "set", "task", task, "failed", "--if-version", "1")
    assert stale.returncode == ExitCode.CONFLICT
    assert "412 version_mismatch" in stale.stderr

    missing = await potok(service, "states", "get", "task", "nobody")
    assert missing.returncode == ExitCode.NOT_FOUND
    invalid = await potok(service, "states", "set", "task", "bad id", "created")
    assert invalid.returncode == ExitCode.USAGE
    bad_metadata = await potok(service, "states", "set", "task", "x", "created", "--metadata", "[]")
    assert bad_metadata.returncode == ExitCode.USAGE
    usage = await potok(service, "states", "get", "task")
    assert usage.returncode == ExitCode.USAGE
    denied = await potok(service, "states", "get", "task", task, "--api-key", "wrong")
    assert denied.returncode == ExitCode.UNAUTHORIZED
    unreachable = await potok(
        None, "states", "get", "task", task, "--url", f"http://127.0.0.1:{free_port()}"
    )
    assert unreachable.returncode == ExitCode.UNREACHABLE
    assert "cannot reach" in unreachable.stderr


async def test_states_watch_prints_changes(service: Service) -> None:
    entity = f"cw{uuid.uuid4().hex[:6]}"
    for status in ("one", "two"):
        await potok(service, "states", "set", entity, "a", status)
    watched = await potok(service, "states", "watch", entity, "--after", "0", "--count", "2")
    assert watched.returncode == 0, watched.stderr
    lines = [line.split() for line in watched.stdout.splitlines()]
    assert [line[1:] for line in lines] == [
        ["entity.created", entity, "a", "-", "->", "one"],
        ["entity.updated", entity, "a", "one", "->", "two"],
    ]
    as_json = await potok(
        service, "states", "watch", entity, "--after", "0", "--count", "2", "--json"
    )
    assert [json.loads(line)["data"]["newStatus"] for line in as_json.stdout.splitlines()] == [
        "one",
        "two",
    ]


async def test_webhooks_create_list_deliveries_replay(service: Service) -> None:
    entity = f"cwh{uuid.uuid4().hex[:6]}"
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    created = parsed(
        await potok(
            service,
            "webhooks",
            "create",
            url,
            "--event",
            "entity.*",
            "--entity-type",
            entity,
            "--description",
            "from the CLI",
            "--json",
        )
    )
    assert created["secret"].startswith("whsec_")
    listed = parsed(await potok(service, "webhooks", "list", "--json"))
    assert created["id"] in {s["id"] for s in listed}
    table = await potok(service, "webhooks", "list")
    assert any(line.startswith(created["id"]) for line in table.stdout.splitlines())

    await potok(service, "states", "set", entity, "a", "one")
    replayed = parsed(
        await potok(service, "webhooks", "replay", created["id"], "--from-revision", "0", "--json")
    )
    assert replayed["scheduled"] == 1

    async def both_logged() -> list[dict[str, Any]] | None:
        log: list[dict[str, Any]] = parsed(
            await potok(service, "webhooks", "deliveries", created["id"], "--json")
        )
        return log if len(log) == 2 else None

    deliveries = await eventually(both_logged, what="the delivery and its replay")
    assert {d["event"] for d in deliveries} == {"entity.created"}
    missing = await potok(service, "webhooks", "deliveries", "sub_" + "0" * 24)
    assert missing.returncode == ExitCode.NOT_FOUND


def test_the_client_verbs_load_no_server_code() -> None:
    script = (
        "import sys\n"
        "from potok_state.cli import main\n"
        "try:\n"
        "    main(['states', 'get', 'task', 'x', '--url', 'http://127.0.0.1:1'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "server = ('fastapi', 'starlette', 'sqlalchemy', 'redis', 'asyncpg', 'uvicorn')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in server))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "POTOK_API_KEY": "k"},
    )
    assert result.stdout.strip() == "[]"
