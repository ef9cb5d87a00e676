"""The command line: parses, then delegates. Exit codes: 0 ok, 1 runtime failure, 2 usage."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import anyio
import httpx
from redis import exceptions as rexc

from . import __version__, logs
from .connection import connect
from .dispatcher import Dispatcher
from .errors import ConfigError, InvalidTask
from .producer import build_entry, enqueue
from .settings import ENV_PREFIX, Settings, load_settings, mask_url

log = logging.getLogger("ratedispatch")


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
    enq.add_argument(
        "--field", action="append", default=[], metavar="K=V", help="a query parameter; repeatable"
    )
    enq.add_argument("--body", help="JSON request body")
    enq.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra request header; repeatable",
    )
    enq.add_argument("--idempotency-key", help="defaults to the entry id")
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
            from .demo import run_demo

            if args.tasks < 1 or args.limit < 1 or args.window <= 0 or args.workers < 1:
                raise ConfigError("demo: --tasks, --limit, --workers must be ≥ 1, --window > 0")
            logs.configure("ERROR", "text")  # the summary lists what matters
            ok = anyio.run(run_demo, args.tasks, args.limit, args.window, args.workers)
            return 0 if ok else 1
        settings = load_settings(**_overrides(args))
        logs.configure(settings.log_level, settings.log_format)
        if args.command == "enqueue":
            return anyio.run(_enqueue, settings, args)
        settings.require_api()
        anyio.run(_worker, settings)
        return 0
    except ConfigError as exc:
        print(f"ratedispatch: {exc}", file=sys.stderr)
        return 2


async def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
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
    redis = connect(settings.redis_url)
    try:
        print(await enqueue(redis, settings.stream, entry))
    except rexc.RedisError as exc:
        print(f"ratedispatch: Redis at {mask_url(settings.redis_url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    return 0


async def _worker(settings: Settings) -> None:
    log.info("effective settings: %s", settings.described())
    redis = connect(settings.redis_url)
    limits = httpx.Limits(
        max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
    )
    async with httpx.AsyncClient(timeout=settings.http_timeout_seconds, limits=limits) as http:
        dispatcher = Dispatcher(settings, redis, http)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, dispatcher)
            await dispatcher.run()
            tg.cancel_scope.cancel()
    await redis.aclose()


async def _stop_on_signal(dispatcher: Dispatcher) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(
                "%s received: taking nothing new, finishing calls in flight",
                signal.Signals(signum).name,
            )
            dispatcher.stop()
