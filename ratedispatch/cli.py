"""The command line: parses, then delegates. Exit codes: 0 ok, 1 runtime failure, 2 usage."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import version
from typing import Any, NoReturn, get_args
from urllib.parse import parse_qs, urlsplit

import anyio
from pydantic import SecretStr
from redis import exceptions as rexc
from redis.asyncio import Redis

from . import logs
from .apis import DEFAULT, default_api, load_apis, read_config
from .connection import connect
from .errors import ConfigError, InvalidTask, RatedispatchError
from .ops import admin
from .ops.dead import parse_duration
from .producer import build_entry, enqueue
from .settings import ENV_PREFIX, Settings, load_settings, mask_url
from .terms import Limits
from .worker.service import run_worker

# The settings each command reads, and so the only ones it shows and takes as flags (the rest
# may still sit in the environment or `.env`, shared with the workers). tests/test_cli_settings.py
# runs each command and checks that it reads no other setting and every one of these.
_LOG = ("log_level", "log_format")
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "enqueue": ("redis_url", "stream", "max_body_bytes", "config", *_LOG),
    "status": (
        "redis_url", "stream", "group", "rate_key", "rate_limit", "rate_window_seconds",
        "limits", "max_in_flight", "http_timeout_seconds", "reclaim_idle_seconds",
        "dead_letter_stream", "results_stream", "config", "key_field", "key_limits",
        "rate_headers", "rate_adapt", *_LOG,
    ),
    "dead list": ("redis_url", "dead_letter_stream", *_LOG),
    "dead requeue": ("redis_url", "dead_letter_stream", "stream", *_LOG),
    "dead purge": ("redis_url", "dead_letter_stream", *_LOG),
}  # fmt: skip


def is_secret(name: str) -> bool:
    """A setting kept off the command line (`ps` and shell histories show it): API_TOKEN."""
    annotation = Settings.model_fields[name].annotation
    return annotation is SecretStr or SecretStr in get_args(annotation)


def settings_of(command: str) -> tuple[str, ...]:
    """The settings `command` ("worker", "enqueue", "dead list"…) takes as flags."""
    if command == "worker":
        return tuple(name for name in Settings.model_fields if not is_secret(name))
    return COMMAND_SETTINGS[command]


# Settings that are URLs: a password in one is a secret on the command line.
_URL_SETTINGS = ("redis_url", "api_base_url")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ratedispatch: {message} (see --help)\n")


def _setting_flags(command: str) -> _Parser:
    """`--rate-limit 5` etc. for the settings `command` reads: flags override the environment
    and `.env`. Secrets have no flag."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group(
        "settings (override RATEDISPATCH_* variables; secrets only from the environment or .env)"
    )
    for name in settings_of(command):
        flag = "--" + name.replace("_", "-")
        group.add_argument(
            flag, dest=f"setting_{name}", metavar="VALUE", help=f"{ENV_PREFIX}{name.upper()}"
        )
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ratedispatch", description="Rate-limited dispatcher for HTTP APIs.")
    parser.add_argument(
        "--version", action="version", version=f"ratedispatch {version('ratedispatch')}"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("worker", parents=[_setting_flags("worker")], help="run a worker (the service)")

    enq = sub.add_parser("enqueue", parents=[_setting_flags("enqueue")],
                         help="add a task; prints its entry id")  # fmt: skip
    enq.add_argument("endpoint", help="path under the API base URL, e.g. /profile")
    enq.add_argument("--method", help="GET (default), POST, PUT, PATCH or DELETE")
    enq.add_argument("--priority", help="high, normal (default) or low")
    enq.add_argument("--field", action="append", default=[], metavar="K=V",
                     help="a query parameter; repeatable")  # fmt: skip
    enq.add_argument("--body", help="JSON request body")
    enq.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                     help="an extra request header; repeatable")  # fmt: skip
    enq.add_argument("--idempotency-key", help="defaults to the entry id")
    enq.add_argument("--cost", metavar="N",
                     help="units the call counts against every limit term (default 1)")  # fmt: skip
    enq.add_argument("--api", metavar="NAME",
                     help="the API to call, as RATEDISPATCH_CONFIG names it")  # fmt: skip

    status = sub.add_parser("status", parents=[_setting_flags("status")],
                            help="backlog, limit terms, consumers")  # fmt: skip
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--watch", action="store_true", help="refresh every second")

    dead = sub.add_parser("dead", help="list, requeue or purge dead letters")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True, parser_class=_Parser)
    dead_list = dead_sub.add_parser("list", parents=[_setting_flags("dead list")],
                                    help="the oldest dead letters")  # fmt: skip
    dead_list.add_argument("--count", type=int, help="how many (default 20)")
    dead_list.add_argument("--all", action="store_true", help="every dead letter")
    dead_list.add_argument("--json", action="store_true", help="a JSON array")
    requeue = dead_sub.add_parser("requeue", parents=[_setting_flags("dead requeue")],
                                  help="put dead letters back on the task stream")  # fmt: skip
    requeue.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids")
    requeue.add_argument("--all", action="store_true", help="every dead letter")
    requeue.add_argument("--verbose", action="store_true",
                         help="print each requeued id and its new id")  # fmt: skip
    purge = dead_sub.add_parser("purge", parents=[_setting_flags("dead purge")],
                                help="delete dead letters")  # fmt: skip
    purge.add_argument("--older-than", metavar="DURATION", help="e.g. 7d, 12h, 30m, 90s")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    demo = sub.add_parser("demo", help="everything in one process, on an embedded Redis")
    demo.add_argument("--tasks", type=int, default=200, help="how many tasks (default 200)")
    demo.add_argument("--limit", type=int, default=20, help="calls per window (default 20)")
    demo.add_argument("--window", type=float, default=1.0, help="window seconds (default 1)")
    demo.add_argument("--workers", type=int, default=3, help="workers sharing the limit")
    demo.add_argument("--limits", metavar="TERMS",
                      help='several terms at once, e.g. "20/1s, 50/5s" (instead of --limit and '
                      "--window)")  # fmt: skip
    demo.add_argument("--tenants", action="store_true",
                      help="many tenants taking turns, and a second API beside them")  # fmt: skip
    demo.add_argument("--headers", action="store_true",
                      help="an API that announces its own quota, and changes it; the fleet "
                      "follows")  # fmt: skip
    return parser


def _refuse(parser: argparse.ArgumentParser, extras: Sequence[str]) -> NoReturn:
    """Unknown arguments; a secret's flag gets its own answer, without its value."""
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        if is_secret(name) and any(a == flag or a.startswith(f"{flag}=") for a in extras):
            parser.error(
                f"{flag} is not accepted (`ps` and shell history show command lines): "
                f"set {ENV_PREFIX}{name.upper()} in the environment or .env"
            )
    parser.error(f"unrecognized arguments: {' '.join(extras)}")


def _refuse_passwords(args: argparse.Namespace) -> None:
    """A URL flag with a password in it is refused, without repeating the URL."""
    for name in _URL_SETTINGS:
        value = getattr(args, f"setting_{name}", None)
        if value is not None and _has_password(value):
            raise ConfigError(
                f"--{name.replace('_', '-')} must not carry a password (`ps` and shell history "
                f"show command lines): set {ENV_PREFIX}{name.upper()} in the environment or .env"
            )


def _has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed URL: the settings refuse it, masked
        return False
    # redis-py also takes `?password=…` (and a value for any other field) from the query.
    return password is not None or "password" in parse_qs(parts.query)


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
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse(parser, extras)
    try:
        if args.command == "demo":
            return _demo(args)
        _refuse_passwords(args)
        settings = load_settings(**_overrides(args))
        logs.configure(settings.log_level, settings.log_format)
        if args.command == "worker":
            apis = load_apis(settings, settings.config) if settings.config else None
            # The default API is always there: tasks that name no API are for it.
            (apis[DEFAULT] if apis else default_api(settings)).settings.require_api()
            anyio.run(run_worker, settings, apis)
            return 0
        return _with_redis(settings, args)
    except ConfigError as exc:
        print(f"ratedispatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0  # Ctrl-C on `status --watch` or a confirmation prompt


def _demo(args: argparse.Namespace) -> int:
    from .devtools.announced import run_announced_demo
    from .devtools.demo import run_demo  # fakeredis is only needed here
    from .devtools.tenants import run_tenants_demo

    if args.workers < 1:
        raise ConfigError("demo: --workers must be ≥ 1")
    if args.tenants and args.headers:
        raise ConfigError("demo: --tenants or --headers, one at a time")
    if args.headers:
        logs.configure("ERROR", "text")
        return 0 if anyio.run(run_announced_demo, args.workers) else 1
    if args.tenants:
        logs.configure("ERROR", "text")
        return 0 if anyio.run(run_tenants_demo, args.workers) else 1

    if args.tasks < 1 or args.limit < 1 or args.window <= 0 or args.workers < 1:
        raise ConfigError("demo: --tasks, --limit, --workers must be ≥ 1, --window > 0")
    try:
        limits = None if args.limits is None else Limits.parse(args.limits)
    except ValueError as exc:
        raise ConfigError(f"demo: --limits {args.limits!r}: {exc}") from None
    logs.configure("ERROR", "text")  # the summary lists what matters
    ok = anyio.run(run_demo, args.tasks, args.limit, args.window, args.workers, None, limits)
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
    except BrokenPipeError:
        # The reader went away (`dead list --all | head`): stop, quietly. Python flushes stdout
        # again at exit; pointed at /dev/null, that flush cannot fail as well.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
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
        apis = {DEFAULT, *read_config(settings.config).apis} if settings.config else None
        try:
            entry = build_entry(
                args.endpoint,
                method=args.method,
                priority=args.priority,
                fields=_pairs(args.field, "--field"),
                body=args.body,
                headers=_pairs(args.header, "--header"),
                idempotency_key=args.idempotency_key,
                cost=args.cost,
                api=args.api,
                apis=apis,
                max_body_bytes=settings.max_body_bytes,
            )
        except (InvalidTask, ValueError) as exc:
            raise ConfigError(f"the task would be dead-lettered: {exc}") from None

        async def do_enqueue(redis: Redis) -> int:
            print(await enqueue(redis, settings.stream, entry), file=out)
            return 0

        return do_enqueue
    if args.command == "status":
        known = load_apis(settings, settings.config, tokens=False) if settings.config else None

        async def do_status(redis: Redis) -> int:
            await admin.show_status(
                redis, settings, as_json=args.json, watch=args.watch, out=out, apis=known
            )
            return 0

        return do_status
    err = sys.stderr
    if args.dead_command == "list":
        if args.all and args.count is not None:
            raise ConfigError("dead list: give --count or --all, not both")
        if args.count is not None and args.count < 1:
            raise ConfigError("dead list: --count must be at least 1")
        count = None if args.all else (args.count or 20)
        return lambda redis: _zero(admin.list_dead(redis, settings, count, args.json, out, err=err))
    if args.dead_command == "requeue":
        if bool(args.ids) == args.all:
            raise ConfigError("dead requeue: give dead-letter ids, or --all (not both)")
        return lambda redis: admin.requeue_dead(
            redis, settings, args.ids, out, err=err, verbose=args.verbose
        )
    try:
        older = parse_duration(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise ConfigError(f"dead purge: {exc}") from None
    return lambda redis: admin.purge_dead(redis, settings, older, args.yes, admin.ask, out, err=err)


async def _zero(action: Awaitable[None]) -> int:
    await action
    return 0
