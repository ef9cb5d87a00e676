"""The command line: parses, then delegates. Exit codes: 0 ok, 1 runtime failure, 2 usage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis

from . import __version__, logs
from .connection import connect
from .errors import ConfigError, InvalidTask, RatedispatchError
from .ops import admin
from .ops.dead import parse_duration
from .producer import build_entry, enqueue
from .settings import ENV_PREFIX, Settings, load_settings, mask_url
from .worker.service import run_worker


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ratedispatch: {message} (see --help)\n")


def _setting_flags() -> _Parser:
    """`--rate-limit 5` etc. for every setting: flags override the environment and `.env`."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("settings (override RATEDISPATCH_* variables)")
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        group.add_argument(
            flag, dest=f"setting_{name}", metavar="VALUE", help=f"{ENV_PREFIX}{name.upper()}"
        )
    return parent


def _parser() -> argparse.ArgumentParser:
    settings = _setting_flags()
    parser = _Parser(prog="ratedispatch", description="Rate-limited dispatcher for HTTP APIs.")
    parser.add_argument("--version", action="version", version=f"ratedispatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("worker", parents=[settings], help="run a worker (the service)")

    enq = sub.add_parser("enqueue", parents=[settings], help="add a task; prints its entry id")
    enq.add_argument("endpoint", help="path under the API base URL, e.g. /profile")
    enq.add_argument("--method", help="GET (default), POST, PUT, PATCH or DELETE")
    enq.add_argument("--priority", help="high, normal (default) or low")
    enq.add_argument("--field", action="append", default=[], metavar="K=V",
                     help="a query parameter; repeatable")  # fmt: skip
    enq.add_argument("--body", help="JSON request body")
    enq.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                     help="an extra request header; repeatable")  # fmt: skip
    enq.add_argument("--idempotency-key", help="defaults to the entry id")

    status = sub.add_parser("status", parents=[settings], help="backlog, window, consumers")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--watch", action="store_true", help="refresh every second")

    dead = sub.add_parser("dead", help="list, requeue or purge dead letters")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True, parser_class=_Parser)
    dead_list = dead_sub.add_parser("list", parents=[settings], help="the oldest dead letters")
    dead_list.add_argument("--count", type=int, default=20, help="how many (default 20)")
    dead_list.add_argument("--json", action="store_true", help="a JSON array")
    requeue = dead_sub.add_parser("requeue", parents=[settings],
                                  help="put dead letters back on the task stream")  # fmt: skip
    requeue.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids")
    requeue.add_argument("--all", action="store_true", help="every dead letter")
    purge = dead_sub.add_parser("purge", parents=[settings], help="delete dead letters")
    purge.add_argument("--older-than", metavar="DURATION", help="e.g. 7d, 12h, 30m, 90s")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    demo = sub.add_parser("demo", help="everything in one process, on an embedded Redis")
    demo.add_argument("--tasks", type=int, default=200, help="how many tasks (default 200)")
    demo.add_argument("--limit", type=int, default=20, help="calls per window (default 20)")
    demo.add_argument("--window", type=float, default=1.0, help="window seconds (default 1)")
    demo.add_argument("--workers", type=int, default=3, help="workers sharing the limit")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    prefix = "setting_"
    return {k.removeprefix(prefix): v for k, v in vars(args).items() if k.startswith(prefix)}


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise ConfigError(f"{what} {value!r} is not NAME=VALUE")
        pairs[name] = rest
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        settings = load_settings(**_overrides(args))
        logs.configure(settings.log_level, settings.log_format)
        if args.command == "worker":
            settings.require_api()
            anyio.run(run_worker, settings)
            return 0
        return _with_redis(settings, args)
    except ConfigError as exc:
        print(f"ratedispatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0  # Ctrl-C on `status --watch` or a confirmation prompt


def _demo(args: argparse.Namespace) -> int:
    from .devtools.demo import run_demo  # fakeredis is only needed here

    if args.tasks < 1 or args.limit < 1 or args.window <= 0 or args.workers < 1:
        raise ConfigError("demo: --tasks, --limit, --workers must be ≥ 1, --window > 0")
    logs.configure("ERROR", "text")  # the summary lists what matters
    ok = anyio.run(run_demo, args.tasks, args.limit, args.window, args.workers)
    return 0 if ok else 1


def _with_redis(settings: Settings, args: argparse.Namespace) -> int:
    """The commands that talk to Redis once: a Redis failure is one line and exit code 1."""
    command = _command(settings, args)

    async def run() -> int:
        redis = connect(settings.redis_url)
        try:
            return await command(redis)
        finally:
            await redis.aclose()

    try:
        return anyio.run(run)
    except (rexc.RedisError, OSError) as exc:
        print(f"ratedispatch: Redis at {mask_url(settings.redis_url)}: {exc}", file=sys.stderr)
        return 1
    except RatedispatchError as exc:
        if isinstance(exc, ConfigError):
            raise
        print(f"ratedispatch: {exc}", file=sys.stderr)
        return 1


def _command(settings: Settings, args: argparse.Namespace) -> Callable[[Redis], Awaitable[int]]:
    out = sys.stdout
    if args.command == "enqueue":
        try:
            entry = build_entry(
                args.endpoint,
                method=args.method,
                priority=args.priority,
                fields=_pairs(args.field, "--field"),
                body=args.body,
                headers=_pairs(args.header, "--header"),
                idempotency_key=args.idempotency_key,
                max_body_bytes=settings.max_body_bytes,
            )
        except (InvalidTask, ValueError) as exc:
            raise ConfigError(f"the task would be dead-lettered: {exc}") from None

        async def do_enqueue(redis: Redis) -> int:
            print(await enqueue(redis, settings.stream, entry), file=out)
            return 0

        return do_enqueue
    if args.command == "status":

        async def do_status(redis: Redis) -> int:
            await admin.show_status(redis, settings, as_json=args.json, watch=args.watch, out=out)
            return 0

        return do_status
    if args.dead_command == "list":
        if args.count < 1:
            raise ConfigError("dead list: --count must be at least 1")
        return lambda redis: _zero(admin.list_dead(redis, settings, args.count, args.json, out))
    if args.dead_command == "requeue":
        if bool(args.ids) == args.all:
            raise ConfigError("dead requeue: give dead-letter ids, or --all (not both)")
        return lambda redis: admin.requeue_dead(redis, settings, args.ids, out)
    try:
        older = parse_duration(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise ConfigError(f"dead purge: {exc}") from None
    return lambda redis: admin.purge_dead(redis, settings, older, args.yes, admin.ask, out)


async def _zero(action: Awaitable[None]) -> int:
    await action
    return 0
