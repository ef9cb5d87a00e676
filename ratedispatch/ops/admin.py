"""`ratedispatch status` and `ratedispatch dead …`: what an operator runs against Redis.

The dead-letter commands walk the stream a batch at a time (ops/dead.py): a million letters take
the memory of one batch, show a bar on a terminal, and end with one summary line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TextIO

import anyio
from redis.asyncio import Redis

from ..apis import Api
from ..errors import ConfigError
from ..keys import Keys
from ..settings import Settings
from . import status as status_mod
from .dead import BATCH, DeadLetter, DeadLetters, Span
from .progress import Progress

CLEAR = "\x1b[H\x1b[J"
HEADER = ("ID", "FAILED AT (UTC)", "STATUS", "ATTEMPTS", "ENDPOINT", "REASON")


async def show_status(
    redis: Redis,
    settings: Settings,
    *,
    as_json: bool,
    watch: bool,
    out: TextIO,
    apis: Mapping[str, Api] | None = None,
) -> None:
    while True:
        snapshot = await status_mod.collect(redis, settings, apis)
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


def _row(letter: DeadLetter) -> tuple[str, ...]:
    f = letter.fields
    return (
        letter.id,
        _when(f.get("failed_at", "")),
        f.get("last_status", ""),
        f.get("attempts", ""),
        f.get("endpoint", "")[:40],
        f.get("reason", "")[:100],
    )


class _Table:
    """The table of `dead list`, printed a batch at a time: the first batch sets the column
    widths (a later, longer cell pushes its row along rather than holding back the output)."""

    def __init__(self) -> None:
        self.widths: list[int] | None = None

    def lines(self, letters: Sequence[DeadLetter]) -> list[str]:
        rows = [_row(letter) for letter in letters]
        out: list[str] = []
        if self.widths is None:
            self.widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(5)]
            out.append(self._line(HEADER))
        out += [self._line(row) for row in rows]
        return out

    def _line(self, row: tuple[str, ...]) -> str:
        assert self.widths is not None
        cells = zip(row[:5], self.widths, strict=True)
        return "  ".join(cell.ljust(w) for cell, w in cells) + "  " + row[5]


def render_letters(letters: Sequence[DeadLetter]) -> str:
    if not letters:
        return "no dead letters"
    return "\n".join(_Table().lines(letters))


async def list_dead(
    redis: Redis,
    settings: Settings,
    count: int | None,
    as_json: bool,
    out: TextIO,
    *,
    err: TextIO | None = None,
    batch: int = BATCH,
) -> None:
    """The oldest `count` dead letters (all when None), streamed: JSON as one array."""
    dead = DeadLetters(redis, Keys.from_settings(settings))
    # On a terminal the rows are the progress; the bar is for output sent to a file or a pipe.
    bar_on = None if out.isatty() else Progress.on_terminal(err or sys.stderr)
    total = None
    if bar_on is not None:
        total = (await dead.everything()).count
        total = total if count is None else min(count, total)
    progress = Progress(bar_on, "listing", total)
    table, written = _Table(), 0
    try:
        async for letters in dead.walk(limit=count, batch=batch):
            if as_json:
                items = ", ".join(json.dumps(letter.as_dict()) for letter in letters)
                out.write(("[" if written == 0 else ", ") + items)
            else:
                out.write("\n".join(table.lines(letters)) + "\n")
            written += len(letters)
            progress.advance(len(letters))
    finally:
        progress.close()
    if as_json:
        out.write("]\n" if written else "[]\n")
    elif not written:
        print("no dead letters", file=out)
    out.flush()


async def _chunks(ids: Sequence[str], size: int) -> AsyncIterator[list[str]]:
    for first in range(0, len(ids), size):
        yield list(ids[first : first + size])


async def requeue_dead(
    redis: Redis,
    settings: Settings,
    ids: Sequence[str],
    out: TextIO,
    *,
    err: TextIO | None = None,
    verbose: bool = False,
    batch: int = BATCH,
) -> int:
    """Requeue the given dead letters (or all, when `ids` is empty); exit code 1 if any id was
    unknown. The CLI has already refused ids together with --all, or neither."""
    err = err or sys.stderr
    dead = DeadLetters(redis, Keys.from_settings(settings))
    if ids:
        total, batches = len(ids), _chunks(ids, batch)
    else:
        # The letters there are now: one that fails again while this runs is not chased.
        span = await dead.everything()
        if span.count == 0:
            print("no dead letters", file=out)
            return 0
        total, batches = span.count, dead.ids(span, batch=batch)
    progress = Progress(Progress.on_terminal(err), "requeueing", total)
    failed = 0

    def summary() -> str:
        requeued = progress.done - failed
        return f"requeued {requeued} dead letters" + (f", {failed} not requeued" if failed else "")

    async with _summarised(progress, summary, out):
        async for chunk in batches:
            for done in await dead.requeue_many(chunk, batch=batch):
                if done.new_id is None:
                    progress.line(f"ratedispatch: {done.error}", err)
                    failed += 1
                elif verbose:
                    progress.line(f"requeued {done.dead_id} as {done.new_id}", out)
            progress.advance(len(chunk))
    return 1 if failed else 0


async def purge_dead(
    redis: Redis,
    settings: Settings,
    older_than: float | None,
    yes: bool,
    confirm: Callable[[str], bool],
    out: TextIO,
    *,
    err: TextIO | None = None,
    batch: int = BATCH,
) -> int:
    dead = DeadLetters(redis, Keys.from_settings(settings))
    bar_on = Progress.on_terminal(err or sys.stderr)
    count: int | None
    if older_than is None:
        span = await dead.everything()
        count = span.count
    elif yes:  # no question to ask: no count needed first
        span, count = Span(0, await dead.before(older_than)), None
    else:
        span = await _count(dead, older_than, bar_on, batch)
        count = span.count
    if count == 0:
        print("no dead letters to purge", file=out)
        return 0
    if not yes:
        scope = "" if older_than is None else f" that failed more than {older_than:g}s ago"
        question = f"Delete {count} dead letters{scope} from {dead.stream}?"
        if not confirm(question):
            print("nothing purged", file=out)
            return 1
    progress = Progress(bar_on, "purging", count)

    def summary() -> str:
        if progress.done == 0:
            return "no dead letters to purge"
        return f"purged {progress.done} dead letters"

    async with _summarised(progress, summary, out):
        async for n in dead.purge_batches(span, batch=batch):
            progress.advance(n)
    return 0


@asynccontextmanager
async def _summarised(
    progress: Progress, summary: Callable[[], str], out: TextIO
) -> AsyncIterator[None]:
    """Erase the bar and print the summary line at the end, and also when stopped part of the
    way (Ctrl-C, Redis gone) if anything was done: each letter is done whole, so the count is
    what the operator needs to know where things stand."""
    try:
        yield
    except BaseException:
        progress.close()
        if progress.done:
            print(summary() + " (stopped before the end)", file=out)
        raise
    progress.close()
    print(summary(), file=out)


async def _count(dead: DeadLetters, older_than: float, bar_on: TextIO | None, batch: int) -> Span:
    progress = Progress(bar_on, "counting", None)
    try:
        return await dead.older_than(older_than, batch=batch, counted=progress.advance)
    finally:
        progress.close()


def ask(question: str) -> bool:
    """Confirmation on the terminal; without one, refuse rather than guess."""
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} No terminal to confirm on: pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
