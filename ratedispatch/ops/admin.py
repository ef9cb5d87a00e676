"""`ratedispatch status` and `ratedispatch dead …`: what an operator runs against Redis."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

import anyio
from redis.asyncio import Redis

from ..errors import ConfigError
from ..keys import Keys
from ..ops import status as status_mod
from ..ops.dead import DeadLetter, DeadLetters, UnknownDeadLetter
from ..settings import Settings

CLEAR = "\x1b[H\x1b[J"


async def show_status(
    redis: Redis, settings: Settings, *, as_json: bool, watch: bool, out: TextIO
) -> None:
    while True:
        snapshot = await status_mod.collect(redis, settings)
        text = snapshot.to_json() if as_json else status_mod.render(snapshot)
        if watch and not as_json:
            text = CLEAR + text + "\n(refreshing every second; Ctrl-C to stop)"
        print(text, file=out, flush=True)
        if not watch:
            return
        await anyio.sleep(1)


def _when(ms: str) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return ms


def render_letters(letters: Sequence[DeadLetter]) -> str:
    if not letters:
        return "no dead letters"
    rows = [("ID", "FAILED AT (UTC)", "STATUS", "ATTEMPTS", "ENDPOINT", "REASON")]
    for letter in letters:
        f = letter.fields
        rows.append(
            (
                letter.id,
                _when(f.get("failed_at", "")),
                f.get("last_status", ""),
                f.get("attempts", ""),
                f.get("endpoint", "")[:40],
                f.get("reason", "")[:100],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
        for row in rows
    )


async def list_dead(
    redis: Redis, settings: Settings, count: int, as_json: bool, out: TextIO
) -> None:
    letters = await DeadLetters(redis, Keys.from_settings(settings)).oldest(count)
    if as_json:
        print(json.dumps([letter.as_dict() for letter in letters]), file=out)
    else:
        print(render_letters(letters), file=out)


async def requeue_dead(redis: Redis, settings: Settings, ids: Sequence[str], out: TextIO) -> int:
    """Requeue the given dead letters (or all, when `ids` is empty); exit code 1 if any id was
    unknown. The CLI has already refused ids together with --all, or neither."""
    dead = DeadLetters(redis, Keys.from_settings(settings))
    targets = list(ids) or [letter.id for letter in await dead.oldest()]
    if not targets:
        print("no dead letters", file=out)
        return 0
    failed = 0
    for dead_id in targets:
        try:
            new_id = await dead.requeue(dead_id)
        except UnknownDeadLetter as exc:
            print(f"ratedispatch: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"requeued {dead_id} as {new_id}", file=out)
    return 1 if failed else 0


async def purge_dead(
    redis: Redis,
    settings: Settings,
    older_than: float | None,
    yes: bool,
    confirm: Callable[[str], bool],
    out: TextIO,
) -> int:
    dead = DeadLetters(redis, Keys.from_settings(settings))
    count = await dead.count_older_than(older_than)
    if count == 0:
        print("no dead letters to purge", file=out)
        return 0
    scope = "" if older_than is None else f" that failed more than {older_than:g}s ago"
    question = f"Delete {count} dead letters{scope} from {settings.dead_letter_stream}?"
    if not yes and not confirm(question):
        print("nothing purged", file=out)
        return 1
    print(f"purged {await dead.purge(older_than)} dead letters", file=out)
    return 0


def ask(question: str) -> bool:
    """Confirmation on the terminal; without one, refuse rather than guess."""
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} No terminal to confirm on: pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
