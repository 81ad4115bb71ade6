"""The client verbs of the `potok-state` command (docs/client.md, "Command line"):
`states get|set|history|query|watch` and `webhooks list|create|deliveries|replay`.

They call the service with `PotokClient` and import nothing of the server. Output is
a table for people, JSON with `--json` (an object, an array, or for `watch` one
object per line). Exit codes: see `ExitCode`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from enum import IntEnum
from itertools import islice
from typing import TYPE_CHECKING, TextIO, TypeVar

from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

if TYPE_CHECKING:
    from potok_state.client.sync import PotokClient


T = TypeVar("T")


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # any other error answer, or a watch reset
    USAGE = 2  # bad arguments, or the service found the request invalid (400, 422)
    NOT_FOUND = 3  # 404
    CONFLICT = 4  # 409 (invalid transition, batch rejected, …) or 412 (version mismatch)
    UNAUTHORIZED = 5  # 401, 403: a missing or unknown API key
    UNREACHABLE = 6  # no answer from the service (after the retries)


_METADATA: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(dict[str, JsonValue])


class UsageError(Exception):
    pass


# Options whose value may start with "-": argparse would read `--sort -updatedAt`
# as two options ("expected one argument"), so such a pair is joined first.
_DASHED_VALUES = ("--sort",)


def join_dashed_values(argv: Sequence[str]) -> list[str]:
    """`--sort -updatedAt` as `--sort=-updatedAt`, which argparse understands."""
    joined: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument in _DASHED_VALUES:
            value = next(arguments, None)
            if value is not None and value.startswith("-") and not value.startswith("--"):
                joined.append(f"{argument}={value}")
                continue
            joined.append(argument)
            if value is not None:
                joined.append(value)
            continue
        joined.append(argument)
    return joined


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the service (default: POTOK_URL or http://localhost:3002)")
    common.add_argument("--api-key", help="the x-api-key (default: POTOK_API_KEY)")
    common.add_argument("--json", action="store_true", help="JSON output for scripts")

    states = commands.add_parser("states", help="read and record states (client)")
    verbs = states.add_subparsers(dest="verb", required=True)

    get = verbs.add_parser("get", parents=[common], help="one state")
    get.add_argument("entity")
    get.add_argument("entity_id")
    get.add_argument(
        "--as-of",
        metavar="REVISION|TIME",
        help="the state as it was at this revision or RFC 3339 time",
    )
    get.set_defaults(handler=_run(_states_get))

    record = verbs.add_parser(
        "set", parents=[common], help="record a state: create it, or a validated transition"
    )
    record.add_argument("entity")
    record.add_argument("entity_id")
    record.add_argument("status")
    record.add_argument("--metadata", help="a JSON object (replaces the metadata)")
    record.add_argument("--reason")
    record.add_argument("--ttl", type=int, help="hold a lease of this many seconds (0 drops it)")
    record.add_argument(
        "--if-version",
        type=int,
        help="update an existing state only at this version (PUT with If-Match)",
    )
    record.set_defaults(handler=_run(_states_set))

    history = verbs.add_parser("history", parents=[common], help="every change of a state")
    history.add_argument("entity")
    history.add_argument("entity_id")
    history.add_argument("--limit", type=int, help="at most this many changes")
    history.set_defaults(handler=_run(_states_history))

    query = verbs.add_parser("query", parents=[common], help="states of one type, filtered")
    query.add_argument("entity")
    query.add_argument("--status", action="append", default=[], help="repeatable")
    query.add_argument(
        "--where", action="append", default=[], metavar="KEY=VALUE", help="metadata equality"
    )
    query.add_argument("--sort", default="-updatedAt", help="a field, `-` before it for descending")
    query.add_argument("--limit", type=int, help="at most this many states (all pages)")
    query.set_defaults(handler=_run(_states_query))

    watch = verbs.add_parser("watch", parents=[common], help="follow changes live")
    watch.add_argument("entity", nargs="?", help="one entity type (default: every change)")
    watch.add_argument("--after", type=int, help="replay from after this revision first")
    watch.add_argument("--status", action="append", default=[], help="repeatable")
    watch.add_argument("--event", action="append", default=[], help="repeatable: entity.*, …")
    watch.add_argument("--id-prefix", help="only entity ids starting with this")
    watch.add_argument("--count", type=int, help="stop after this many events")
    watch.set_defaults(handler=_run(_states_watch))

    webhooks = commands.add_parser("webhooks", help="manage webhook subscriptions (client)")
    hooks = webhooks.add_subparsers(dest="verb", required=True)
    hooks.add_parser("list", parents=[common], help="every subscription").set_defaults(
        handler=_run(_webhooks_list)
    )

    create = hooks.add_parser("create", parents=[common], help="subscribe a URL")
    create.add_argument("target", metavar="URL", help="where to deliver")
    create.add_argument(
        "--event", action="append", default=[], help="repeatable pattern (default: *)"
    )
    create.add_argument("--entity-type", action="append", default=[], help="repeatable")
    create.add_argument("--secret", help="signing secret (default: generated, shown once)")
    create.add_argument("--description")
    create.set_defaults(handler=_run(_webhooks_create))

    deliveries = hooks.add_parser("deliveries", parents=[common], help="the delivery log")
    deliveries.add_argument("subscription_id")
    deliveries.add_argument("--limit", type=int, default=50, help="at most this many (newest)")
    deliveries.set_defaults(handler=_run(_webhooks_deliveries))

    replay = hooks.add_parser("replay", parents=[common], help="send matched events again")
    replay.add_argument("subscription_id")
    since = replay.add_mutually_exclusive_group(required=True)
    since.add_argument("--from-revision", type=int)
    since.add_argument("--since", type=datetime.fromisoformat, help="an ISO 8601 time")
    replay.add_argument("--to-revision", type=int, help="up to this revision (inclusive)")
    replay.set_defaults(handler=_run(_webhooks_replay))


Verb = Callable[["PotokClient", argparse.Namespace, TextIO], None]


def _run(verb: Verb) -> Callable[[argparse.Namespace], None]:
    """The verb with a client, its errors turned into a message and an exit code."""

    def handler(args: argparse.Namespace) -> None:
        from potok_state.client import ApiError, PotokClient, TransportError, WatchReset

        client = PotokClient(args.url, args.api_key)
        try:
            with client:
                verb(client, args, sys.stdout)
        except UsageError as exc:
            _fail(ExitCode.USAGE, str(exc))
        except ApiError as exc:
            _fail(_exit_code(exc.status_code), f"{exc.status_code} {exc.code}: {exc.message}")
        except TransportError as exc:
            _fail(ExitCode.UNREACHABLE, f"cannot reach {client.base_url}: {exc.cause!r}")
        except WatchReset as exc:
            _fail(ExitCode.ERROR, f"{exc} {json.dumps(exc.details)}")
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)

    return handler


def _exit_code(status: int) -> ExitCode:
    if status == 404:
        return ExitCode.NOT_FOUND
    if status in (409, 412):
        return ExitCode.CONFLICT
    if status in (401, 403):
        return ExitCode.UNAUTHORIZED
    if status in (400, 422):
        return ExitCode.USAGE
    return ExitCode.ERROR


def _fail(code: ExitCode, message: str) -> None:
    print(f"potok-state: {message}", file=sys.stderr)
    sys.exit(code)


# -- output -----------------------------------------------------------------------


def _emit_one(model: BaseModel, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        out.write(model.model_dump_json() + "\n")
        return
    for name, value in model.model_dump(mode="json").items():
        out.write(f"{name}: {_cell(value)}\n")


def _emit_many(
    rows: Iterable[BaseModel],
    columns: Sequence[str],
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    dumped = [row.model_dump(mode="json") for row in rows]
    if args.json:
        out.write(json.dumps(dumped) + "\n")
        return
    _table([[_cell(item.get(column)) for column in columns] for item in dumped], columns, out)


def _table(rows: list[list[str]], columns: Sequence[str], out: TextIO) -> None:
    widths = [
        max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    for row in [list(columns), *rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        out.write("\n")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _limited(items: Iterator[T], limit: int | None) -> Iterator[T]:
    return items if limit is None else islice(items, limit)


# -- states -----------------------------------------------------------------------

STATE_COLUMNS = ("entityId", "status", "version", "revision", "updatedAt", "metadata")


def _states_get(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    _emit_one(client.get(args.entity, args.entity_id, as_of=_as_of(args.as_of)), args, out)


def _as_of(text: str | None) -> int | datetime | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError("--as-of must be a revision or an RFC 3339 time") from None


def _states_set(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    metadata = None
    if args.metadata is not None:
        try:
            metadata = _METADATA.validate_json(args.metadata)
        except ValidationError:
            raise UsageError("--metadata must be a JSON object") from None
    if args.if_version is not None:
        state = client.put(
            args.entity,
            args.entity_id,
            status=args.status,
            metadata=metadata,
            reason=args.reason,
            ttl=args.ttl,
            if_version=args.if_version,
        )
    else:
        state = client.record(
            args.entity,
            args.entity_id,
            args.status,
            metadata=metadata,
            reason=args.reason,
            ttl=args.ttl,
        )
    _emit_one(state, args, out)


def _states_history(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    entries = _limited(client.history(args.entity, args.entity_id), args.limit)
    columns = ("revision", "version", "event", "previousStatus", "newStatus", "actor", "changedAt")
    _emit_many(entries, columns, args, out)


def _states_query(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    where: dict[str, str] = {}
    for condition in args.where:
        key, equals, value = condition.partition("=")
        if not equals or not key:
            raise UsageError(f"--where takes KEY=VALUE, not {condition!r}")
        where[key] = value
    page_size = min(args.limit, 500) if args.limit else 100
    states = client.query(
        args.entity, status=args.status, metadata=where, sort=args.sort, page_size=page_size
    )
    _emit_many(_limited(states, args.limit), STATE_COLUMNS, args, out)


def _states_watch(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    events = client.watch(
        args.entity,
        after=args.after,
        status=args.status,
        event=args.event,
        entity_id_prefix=args.id_prefix,
    )
    for event in _limited(events, args.count):
        if args.json:
            out.write(event.model_dump_json() + "\n")
        else:
            data = event.data
            line = [str(event.revision), event.event, _cell(data.get("entity"))]
            line += [_cell(data.get("id")), f"{_cell(data.get('previousStatus'))}"]
            line += ["->", _cell(data.get("newStatus"))]
            out.write(" ".join(line) + "\n")
        out.flush()


# -- webhooks ---------------------------------------------------------------------


def _webhooks_list(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    columns = ("id", "status", "url", "events", "entityTypes", "consecutiveFailures", "lastError")
    _emit_many(client.subscriptions(), columns, args, out)


def _webhooks_create(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    created = client.create_subscription(
        args.target,
        args.event or ["*"],
        secret=args.secret,
        description=args.description,
        entity_types=args.entity_type or None,
    )
    _emit_one(created, args, out)


def _webhooks_deliveries(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    deliveries = _limited(client.deliveries(args.subscription_id), args.limit)
    columns = ("id", "revision", "event", "status", "attempts", "lastStatusCode", "lastError")
    _emit_many(deliveries, columns, args, out)


def _webhooks_replay(client: PotokClient, args: argparse.Namespace, out: TextIO) -> None:
    result = client.replay(
        args.subscription_id,
        from_revision=args.from_revision,
        since=args.since,
        to_revision=args.to_revision,
    )
    _emit_one(result, args, out)
