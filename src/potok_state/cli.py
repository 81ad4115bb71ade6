"""`potok-state serve | worker | migrate | config`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable

import uvicorn
from pydantic import SecretStr, ValidationError

from potok_state.settings import Settings, by_environment_name
from potok_state.states.machines import MachineDefinitionError
from potok_state.storage.migrate import upgrade_to_head


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        sys.exit(f"potok-state: invalid configuration: {problems}")


def serve(args: argparse.Namespace) -> None:
    settings = _load_settings()
    from potok_state.app import (
        SHARED_FLOORS_ENV,
        SchemaNotCurrent,
        UnsupportedConfiguration,
        create_app,
    )

    try:
        app = create_app(settings)
    except MachineDefinitionError as exc:
        sys.exit(f"potok-state: invalid state machine table: {exc}")
    except UnsupportedConfiguration as exc:
        sys.exit(f"potok-state: {exc}")
    workers = args.workers or settings.workers
    server = {
        "host": args.host or settings.host,
        "port": args.port or settings.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "timeout_graceful_shutdown": 30,
    }
    try:
        if workers == 1:
            config = uvicorn.Config(app, **server)  # type: ignore[arg-type]
            # The port first: a second `serve` on a busy port stops here, before
            # its lifespan starts a delivery worker or announces itself started.
            # (With workers, uvicorn's supervisor binds before spawning them.)
            listening = config.bind_socket()
            uvicorn.Server(config).run(sockets=[listening])
            return
        if settings.is_sqlite:
            # Once, here, rather than racing in every worker.
            upgrade_to_head(settings.database_url)
        # The workers share one table of revision floors (cache/floors.py), so a
        # write in one is never followed by a stale read in another.
        with tempfile.TemporaryDirectory(prefix="potok-state-") as shared:
            os.environ[SHARED_FLOORS_ENV] = os.path.join(shared, "floors")
            uvicorn.run(
                "potok_state.app:app_from_environment",
                factory=True,
                workers=workers,
                **server,  # type: ignore[arg-type]
            )
    except SchemaNotCurrent as exc:
        sys.exit(f"potok-state: {exc}")


def worker(_: argparse.Namespace) -> None:
    """Run only the webhook delivery worker until SIGTERM/SIGINT."""
    settings = _load_settings()
    from potok_state.app import SchemaNotCurrent, run_worker

    try:
        # The event loop `serve` runs on too (uvicorn picks uvloop when installed).
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_worker(settings))
    except SchemaNotCurrent as exc:
        sys.exit(f"potok-state: {exc}")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def migrate(_: argparse.Namespace) -> None:
    settings = _load_settings()
    upgrade_to_head(settings.database_url)
    print(f"potok-state: database schema is up to date ({_safe_url(settings.database_url)})")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _masked(value: object) -> object:
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return value


def show_config(_: argparse.Namespace) -> None:
    """The effective settings by the environment variables that set them, secrets
    masked; API_KEYS shows the key names in effect (the development key too)."""
    settings = _load_settings()
    effective = {name: _masked(value) for name, value in by_environment_name(settings).items()}
    effective["DATABASE_URL"] = _safe_url(settings.database_url)
    effective["API_KEYS"] = ",".join(f"{key.name}:********" for key in settings.parsed_api_keys)
    print(json.dumps(effective, indent=2, default=str))


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
    commands.add_parser("config", help="print the effective settings, secrets masked").set_defaults(
        handler=show_config
    )
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
