"""`potok-state serve | worker | migrate | rebuild-journal | stream | config`, and the client verbs
`states …` and `webhooks …` (potok_state/client/commands.py).

The server's modules are imported inside the commands that need them, so the client
verbs start without loading FastAPI, SQLAlchemy or Redis code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from potok_state.client.commands import add_commands, join_dashed_values

if TYPE_CHECKING:
    from potok_state.settings import Settings


def _load_settings() -> Settings:
    from pydantic import ValidationError

    from potok_state.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        sys.exit(f"potok-state: invalid configuration: {problems}")


# uvicorn's exit code when the application does not start.
STARTUP_FAILURE = 3


def serve(args: argparse.Namespace) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from potok_state.kit.server import ConnectionLimits, ServerConfig, settle_heap
    from potok_state.states.machines import MachineDefinitionError

    settings = _load_settings()
    from potok_state.app import SHARED_FLOORS_ENV, create_app

    _check_startup(settings)
    try:
        app = create_app(settings)
    except MachineDefinitionError as exc:
        sys.exit(f"potok-state: invalid state machine table: {exc}")
    workers = args.workers or settings.workers
    server: dict[str, Any] = {
        "host": args.host or settings.host,
        "port": args.port or settings.port,
        "log_config": None,
        "access_log": False,
        # Forwarded headers only from proxies named in FORWARDED_ALLOW_IPS (none by
        # default): otherwise any client could pose as any address.
        "proxy_headers": bool(settings.forwarded_allow_ips.strip()),
        "forwarded_allow_ips": settings.forwarded_allow_ips.strip() or "",
        "timeout_graceful_shutdown": 30,
    }
    # The request-head deadline, the connection cap and the streams' direct
    # writes live in the protocol (kit/server.py, docs/operations.md "Limits").
    limits = ConnectionLimits.from_settings(settings)
    if workers == 1:
        settle_heap()
        config = ServerConfig(app, limits=limits, **server)
        # The port first: a second `serve` on a busy port stops here, before
        # its lifespan starts a delivery worker or announces itself started.
        # (With workers, uvicorn's supervisor binds before spawning them.)
        listening = config.bind_socket()
        running = uvicorn.Server(config)
        # uvicorn re-raises the SIGINT it shut down for; uvicorn.run, which
        # this replaces, ends quietly on it, and so does serve.
        with contextlib.suppress(KeyboardInterrupt):
            running.run(sockets=[listening])
        if not running.started:
            # The lifespan failed (say, a schema that is not current); uvicorn
            # has logged why. uvicorn.run exits with this code too.
            sys.exit(STARTUP_FAILURE)
        return
    # The workers share one table of revision floors (cache/floors.py), so a
    # write in one is never followed by a stale read in another.
    with tempfile.TemporaryDirectory(prefix="potok-state-") as shared:
        os.environ[SHARED_FLOORS_ENV] = os.path.join(shared, "floors")
        # What uvicorn.run does for workers, with this configuration (which each
        # worker process receives pickled, the edge's limits with it).
        config = ServerConfig(
            "potok_state.app:app_from_environment",
            factory=True,
            workers=workers,
            limits=limits,
            **server,
        )
        listening = config.bind_socket()
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[listening]).run()


def _check_startup(settings: Settings) -> None:
    """Refuse to start with one line for the operator (an unmigrated schema, a
    changed WEBHOOK_SECRET_KEY) rather than a traceback from the server; an
    embedded SQLite file is migrated here, once, not in every worker."""
    from potok_state.app import SchemaNotCurrent, check_startup
    from potok_state.webhooks.sealing import SecretKeyMismatch

    try:
        asyncio.run(check_startup(settings))
    except (SchemaNotCurrent, SecretKeyMismatch) as exc:
        print(f"potok-state: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


def worker(_: argparse.Namespace) -> None:
    """Run only the webhook delivery worker until SIGTERM/SIGINT."""
    settings = _load_settings()
    from potok_state.app import SchemaNotCurrent, run_worker
    from potok_state.webhooks.sealing import SecretKeyMismatch

    _check_startup(settings)
    try:
        # The event loop `serve` runs on too (uvicorn picks uvloop when installed).
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_worker(settings))
    except (SchemaNotCurrent, SecretKeyMismatch) as exc:
        sys.exit(f"potok-state: {exc}")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def migrate(_: argparse.Namespace) -> None:
    from potok_state.storage.migrate import upgrade_to_head

    settings = _load_settings()
    upgrade_to_head(settings.database_url)
    print(f"potok-state: database schema is up to date ({_safe_url(settings.database_url)})")


def rebuild_journal(_: argparse.Namespace) -> None:
    """Fill an empty journal from the Admin Service (docs/external.md)."""
    from potok_state.settings import StorageBackend

    settings = _load_settings()
    if settings.storage_backend is not StorageBackend.EXTERNAL:
        sys.exit("potok-state: rebuild-journal needs STORAGE_BACKEND=external and EXTERNAL_DB_URL")
    from potok_state.app import SchemaNotCurrent, rebuild_external_journal
    from potok_state.external.client import AdminServiceError
    from potok_state.external.rebuild import JournalNotEmpty

    try:
        rebuilt = asyncio.run(rebuild_external_journal(settings))
    except (SchemaNotCurrent, JournalNotEmpty, AdminServiceError) as exc:
        sys.exit(f"potok-state: {exc}")
    print(
        f"potok-state: rebuilt the journal from the Admin Service: {rebuilt.states} states, "
        f"{rebuilt.history} history records, up to revision {rebuilt.revision}"
    )


def stream(_: argparse.Namespace) -> None:
    """The event stream publisher's position, lease and backlog (docs/stream.md)."""
    settings = _load_settings()
    from potok_state.app import SchemaNotCurrent, stream_position

    try:
        report = asyncio.run(stream_position(settings))
    except SchemaNotCurrent as exc:
        sys.exit(f"potok-state: {exc}")
    print(json.dumps(report, indent=2))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _masked(value: object) -> object:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return value


def show_config(args: argparse.Namespace) -> None:
    """The effective settings by the environment variables that set them, each
    with where its value came from (environment, .env, default), secrets masked;
    API_KEYS shows the key names in effect (the development key too).

    `--check` prints what is wrong instead and exits 1 when anything is: the
    settings that do nothing here, and what production would refuse."""
    from potok_state.kit.scopes import FULL_ACCESS
    from potok_state.settings import Settings, aliases_by_environment_name, by_environment_name

    settings = _load_settings()
    if args.check:
        sys.exit(_check(settings))
    values = by_environment_name(settings)
    values["DATABASE_URL"] = _safe_url(settings.database_url)
    values["API_KEYS"] = ",".join(
        f"{key.name}:********" + ("" if key.grants == FULL_ACCESS else f":{key.grants.describe()}")
        for key in settings.parsed_api_keys
    )
    # The value in force, not the "unset" that means "decided by APP_ENV".
    values["WEBHOOK_ALLOW_PRIVATE_TARGETS"] = settings.webhooks_allow_private_targets
    aliases = aliases_by_environment_name(Settings)
    in_file = _names_in_dotenv(Path(".env"))
    in_environment = {name.upper() for name in os.environ}

    def source(name: str) -> str:
        names = set(aliases.get(name, (name,)))
        if names & in_environment:
            return "environment"
        return ".env" if names & in_file else "default"

    effective = {
        name: {"value": _masked(value), "source": source(name)} for name, value in values.items()
    }
    print(json.dumps(effective, indent=2, default=str))


def _names_in_dotenv(path: Path) -> set[str]:
    """The variable names a `.env` file sets (the values are not needed)."""
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip().removeprefix("export ").strip()
        if line and not line.startswith("#") and "=" in line:
            names.add(line.split("=", 1)[0].strip().upper())
    return names


def _check(settings: Settings) -> int:
    from pydantic import ValidationError

    from potok_state.settings import Settings

    problems = [f"unused: {note}" for note in settings.unused_settings()]
    if not settings.is_production:
        try:
            Settings.model_validate({**settings.model_dump(), "app_env": "production"})
        except ValidationError as exc:
            problems.extend(
                f"production would refuse: {error['msg'].removeprefix('Value error, ')}"
                for error in exc.errors()
            )
    for problem in problems:
        print(problem)
    if not problems:
        print("potok-state: the configuration is valid")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="potok-state", description="Potok State Service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP service")
    serve_cmd.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    serve_cmd.add_argument("--port", type=int, help="port (default: PORT or 3002)")
    serve_cmd.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port, one per core (default: WEB_CONCURRENCY or 1)",
    )
    serve_cmd.set_defaults(handler=serve)
    commands.add_parser("worker", help="run a webhook delivery worker").set_defaults(handler=worker)
    commands.add_parser("migrate", help="upgrade the database schema").set_defaults(handler=migrate)
    commands.add_parser(
        "rebuild-journal",
        help="external backend: fill an empty journal from the Admin Service (after losing it)",
    ).set_defaults(handler=rebuild_journal)
    commands.add_parser(
        "stream", help="show the NATS JetStream publisher's position, lease and backlog"
    ).set_defaults(handler=stream)
    config_cmd = commands.add_parser(
        "config", help="print the effective settings and their sources, secrets masked"
    )
    config_cmd.add_argument(
        "--check",
        action="store_true",
        help="print what is wrong (unused settings, what production would refuse); exit 1 if any",
    )
    config_cmd.set_defaults(handler=show_config)
    add_commands(commands)
    args = parser.parse_args(join_dashed_values(sys.argv[1:] if argv is None else argv))
    args.handler(args)


if __name__ == "__main__":
    main()
