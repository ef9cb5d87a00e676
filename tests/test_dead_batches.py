"""Dead-letter commands at scale: they walk the stream a batch at a time (small batches here, so
that every walk crosses boundaries), requeue a batch per script call, draw a bar only on a
terminal, and end with one summary line.

The Redis-backed tests run on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import io
import json
import re
import sys
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from ratedispatch.cli import main
from ratedispatch.connection import connect
from ratedispatch.keys import Keys
from ratedispatch.ops import admin
from ratedispatch.ops.dead import DeadLetters, UnknownDeadLetter, parse_duration

from .conftest import make_settings
from .redis_server import RedisServer

SETTINGS = make_settings()
KEYS = Keys.from_settings(SETTINGS)


class Terminal(io.StringIO):
    """Output that says it is a terminal, as stderr does in an operator's shell."""

    def isatty(self) -> bool:
        return True


ADDED = {
    "original_id": "1-1", "reason": "HTTP 404", "attempts": "1", "last_status": "404",
    "failed_at": "1700000000000",
}  # fmt: skip


def letter(n: int) -> dict[str, str]:
    """A dead letter as bury.lua writes it: the task's fields, then the five it adds."""
    return {"endpoint": f"/t/{n}", "n": str(n), **ADDED}


async def add(redis: Redis, fields: dict[str, str]) -> str:
    entry_id: Any = await redis.xadd(KEYS.dead, fields)  # type: ignore[arg-type]
    return str(entry_id.decode())


async def bury(redis: Redis, count: int, *, first: int = 0) -> list[str]:
    return [await add(redis, letter(n)) for n in range(first, first + count)]


async def task_numbers(redis: Redis) -> list[str]:
    rows: Any = await redis.xrange(KEYS.stream)
    return [fields[b"n"].decode() for _, fields in rows]


def record_xrange(monkeypatch: pytest.MonkeyPatch, redis: Redis) -> list[int | None]:
    """The COUNT of every XRANGE the client sends from now on."""
    counts: list[int | None] = []
    real = redis.xrange

    async def xrange(name: str, min: str = "-", max: str = "+", count: int | None = None) -> Any:
        counts.append(count)
        return await real(name, min=min, max=max, count=count)

    monkeypatch.setattr(redis, "xrange", xrange)
    return counts


@pytest.mark.anyio
async def test_a_walk_crosses_batch_boundaries_without_losing_or_repeating_a_letter(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await bury(redis, 7)
    dead = DeadLetters(redis, KEYS)
    counts = record_xrange(monkeypatch, redis)
    batches = [[d.id for d in letters] async for letters in dead.walk(batch=3)]
    assert batches == [ids[0:3], ids[3:6], ids[6:7]]
    assert counts and all(c is not None and c <= 3 for c in counts)
    limited = [[d.id for d in letters] async for letters in dead.walk(limit=5, batch=3)]
    assert limited == [ids[0:3], ids[3:5]]


@pytest.mark.anyio
async def test_requeue_all_reads_a_batch_at_a_time_and_puts_every_task_back_in_order(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await bury(redis, 7)
    counts = record_xrange(monkeypatch, redis)
    out, err = io.StringIO(), io.StringIO()
    assert await admin.requeue_dead(redis, SETTINGS, [], out, err=err, batch=3) == 0
    # constant memory: no read asks for more than a batch (the old code read the whole stream)
    assert counts and all(c is not None and c <= 3 for c in counts)
    assert await task_numbers(redis) == [str(n) for n in range(7)]
    assert await redis.xlen(KEYS.dead) == 0
    assert out.getvalue() == "requeued 7 dead letters\n"  # one summary line, no line per id
    assert err.getvalue() == ""  # stderr is not a terminal here: no bar


@pytest.mark.anyio
async def test_requeue_strips_the_added_fields_of_each_letter_in_a_batch(redis: Redis) -> None:
    await bury(redis, 2)
    cut_short = {"endpoint": "/t/9", "n": "9", "fields_dropped": "3", **ADDED}
    await add(redis, cut_short)
    await add(redis, {"endpoint": "/hand-written"})  # not by bury.lua: taken whole
    dead = DeadLetters(redis, KEYS)
    done = await dead.requeue_many([d.id for d in await dead.oldest()], batch=10)
    assert all(d.new_id for d in done)
    rows: Any = await redis.xrange(KEYS.stream)
    assert [dict(fields) for _, fields in rows] == [
        {b"endpoint": b"/t/0", b"n": b"0"},
        {b"endpoint": b"/t/1", b"n": b"1"},
        {b"endpoint": b"/t/9", b"n": b"9"},  # `fields_dropped` goes too
        {b"endpoint": b"/hand-written"},
    ]


@pytest.mark.anyio
async def test_unknown_ids_in_a_batch_are_answered_for_and_the_rest_is_requeued(
    redis: Redis,
) -> None:
    ids = await bury(redis, 3)
    await add(redis, ADDED)
    [empty] = [d.id for d in await DeadLetters(redis, KEYS).oldest()][3:]
    asked = [ids[0], "99-1", "not-an-id", ids[1], "99999999999999999999-0", empty, ids[2]]
    done = await DeadLetters(redis, KEYS).requeue_many(asked, batch=4)
    assert [d.dead_id for d in done] == asked
    assert [d.new_id is not None for d in done] == [True, False, False, True, False, False, True]
    errors = [d.error for d in done if d.new_id is None]
    assert errors == [
        f"no dead letter with id 99-1 in {KEYS.dead}",
        "'not-an-id' is not a stream entry id",
        f"no dead letter with id 99999999999999999999-0 in {KEYS.dead}",
        f"dead letter {empty} has no original fields to requeue",
    ]
    assert await task_numbers(redis) == ["0", "1", "2"]
    assert [d.id for d in await DeadLetters(redis, KEYS).oldest()] == [empty]
    with pytest.raises(UnknownDeadLetter, match="no original fields"):
        await DeadLetters(redis, KEYS).requeue(empty)


@pytest.mark.anyio
async def test_a_letter_too_big_for_one_xadd_is_reported_not_fatal(redis: Redis) -> None:
    [small] = await bury(redis, 1)
    huge = {f"f{i}": "v" for i in range(4000)}  # more than bury.lua ever keeps (3900)
    big = await add(redis, huge)
    done = await DeadLetters(redis, KEYS).requeue_many([big, small])
    assert (done[0].new_id, done[1].new_id is not None) == (None, True)
    assert done[0].error == f"dead letter {big} has more fields than a task can have; not requeued"


@pytest.mark.anyio
async def test_ten_thousand_ids_in_one_script_call(redis_server: RedisServer) -> None:
    # ARGV is walked, never unpack()ed: a batch is not bounded by Lua's ~8000 values.
    redis = connect(redis_server.url)
    await redis.flushall()
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(10_000):
            pipe.xadd(KEYS.dead, letter(n))  # type: ignore[arg-type]
        ids = [i.decode() for i in await pipe.execute()]
    done = await DeadLetters(redis, KEYS).requeue_many(ids, batch=10_000)
    assert sum(d.new_id is not None for d in done) == 10_000
    assert (await redis.xlen(KEYS.stream), await redis.xlen(KEYS.dead)) == (10_000, 0)
    await redis.aclose()


@pytest.mark.anyio
async def test_requeue_all_leaves_letters_that_arrive_while_it_runs(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A requeued task that fails again comes back as a new letter: `--all` means the letters
    # there were when it started, or it could chase its own tail for ever.
    await bury(redis, 5)
    real = DeadLetters.requeue_many

    async def requeue_many(self: DeadLetters, ids: list[str], *, batch: int) -> Any:
        done = await real(self, ids, batch=batch)
        await bury(redis, 1, first=100 + len(done))
        return done

    monkeypatch.setattr(DeadLetters, "requeue_many", requeue_many)
    out = io.StringIO()
    assert await admin.requeue_dead(redis, SETTINGS, [], out, err=io.StringIO(), batch=2) == 0
    assert out.getvalue() == "requeued 5 dead letters\n"
    assert await redis.xlen(KEYS.dead) == 3  # one arrived per batch of 2, 2, 1


@pytest.mark.anyio
async def test_requeue_given_ids_prints_each_only_with_verbose(redis: Redis) -> None:
    ids = await bury(redis, 3)
    out, err = io.StringIO(), io.StringIO()
    code = await admin.requeue_dead(redis, SETTINGS, [ids[0], "99-1"], out, err=err, batch=1)
    assert code == 1
    assert out.getvalue() == "requeued 1 dead letters, 1 not requeued\n"
    assert err.getvalue() == f"ratedispatch: no dead letter with id 99-1 in {KEYS.dead}\n"
    out = io.StringIO()
    assert await admin.requeue_dead(redis, SETTINGS, ids[1:], out, verbose=True, batch=1) == 0
    lines = out.getvalue().splitlines()
    assert [line.split(" as ")[0] for line in lines[:2]] == [f"requeued {i}" for i in ids[1:]]
    assert lines[2:] == ["requeued 2 dead letters"]


@pytest.mark.anyio
async def test_a_bar_is_drawn_on_a_terminal_and_erased_before_the_summary(redis: Redis) -> None:
    await bury(redis, 5)
    out, terminal = io.StringIO(), Terminal()
    assert await admin.requeue_dead(redis, SETTINGS, [], out, err=terminal, batch=2) == 0
    drawn = terminal.getvalue()
    assert drawn.startswith("\rrequeueing ") and "2/5 40%" in drawn and "/s eta " in drawn
    assert drawn.endswith("\r\x1b[K") and "\n" not in drawn  # one line, erased at the end
    assert out.getvalue() == "requeued 5 dead letters\n"


@pytest.mark.anyio
async def test_a_line_printed_during_the_walk_erases_the_bar_first(redis: Redis) -> None:
    ids = await bury(redis, 2)
    terminal = Terminal()
    asked = [ids[0], "99-1", ids[1]]
    await admin.requeue_dead(redis, SETTINGS, asked, io.StringIO(), err=terminal, batch=1)
    error = f"ratedispatch: no dead letter with id 99-1 in {KEYS.dead}\n"
    assert f"\r\x1b[K{error}" in terminal.getvalue()


@pytest.mark.anyio
async def test_stopped_part_of_the_way_it_says_how_many_were_done(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await bury(redis, 4)
    real, calls = DeadLetters.requeue_many, []

    async def requeue_many(self: DeadLetters, ids: list[str], *, batch: int) -> Any:
        calls.append(ids)
        if len(calls) == 2:
            raise ConnectionError("Redis went away")
        return await real(self, ids, batch=batch)

    monkeypatch.setattr(DeadLetters, "requeue_many", requeue_many)
    out = io.StringIO()
    with pytest.raises(ConnectionError):
        await admin.requeue_dead(redis, SETTINGS, [], out, err=io.StringIO(), batch=2)
    assert out.getvalue() == "requeued 2 dead letters (stopped before the end)\n"


@pytest.mark.anyio
async def test_list_streams_valid_json_and_one_table_across_batches(redis: Redis) -> None:
    ids = await bury(redis, 5)
    out = io.StringIO()
    await admin.list_dead(redis, SETTINGS, None, True, out, err=Terminal(), batch=2)
    listed = json.loads(out.getvalue())
    assert [item["id"] for item in listed] == ids and listed[4]["fields"]["n"] == "4"
    out = io.StringIO()
    await admin.list_dead(redis, SETTINGS, 3, False, out, err=io.StringIO(), batch=2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("ID ") and lines[3].startswith(ids[2])
    # the first batch sets the widths: every row's columns line up with the header's
    assert {line.index("/t/") for line in lines[1:]} == {lines[0].index("ENDPOINT")}
    # the same bytes as the one-shot output for a list that fits one batch
    small = io.StringIO()
    await admin.list_dead(redis, SETTINGS, 3, False, small, batch=1000)
    assert small.getvalue() == admin.render_letters(await DeadLetters(redis, KEYS).oldest(3)) + "\n"


@pytest.mark.anyio
async def test_list_of_nothing_is_still_valid_json(redis: Redis) -> None:
    out = io.StringIO()
    await admin.list_dead(redis, SETTINGS, None, True, out, err=io.StringIO())
    assert json.loads(out.getvalue()) == []


@pytest.mark.anyio
async def test_purge_older_than_counts_and_deletes_a_batch_at_a_time(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for old in ("1000-0", "1000-1", "2000-0"):  # 1970
        await redis.xadd(KEYS.dead, {"reason": "old"}, id=old)
    await bury(redis, 2)  # now
    counts = record_xrange(monkeypatch, redis)
    asked: list[str] = []

    def confirm(question: str) -> bool:
        asked.append(question)
        return True

    out = io.StringIO()
    week = parse_duration("7d")
    assert await admin.purge_dead(redis, SETTINGS, week, False, confirm, out, batch=2) == 0
    assert asked == [f"Delete 3 dead letters that failed more than 604800s ago from {KEYS.dead}?"]
    assert out.getvalue() == "purged 3 dead letters\n"
    assert counts and all(c is not None and c <= 2 for c in counts)
    assert [d.fields["n"] for d in await DeadLetters(redis, KEYS).oldest()] == ["0", "1"]


@pytest.mark.anyio
@pytest.mark.parametrize(("old", "new"), [(7, 1), (1, 7), (4, 4), (0, 3), (3, 0)])
async def test_the_count_of_older_letters_reads_from_both_ends_and_stops_at_the_shorter(
    redis: Redis, old: int, new: int
) -> None:
    for n in range(old):
        await redis.xadd(KEYS.dead, letter(n), id=f"1000-{n}")  # type: ignore[arg-type]
    await bury(redis, new)
    read: list[int] = []
    span = await DeadLetters(redis, KEYS).older_than(parse_duration("7d"), batch=2,
                                                     counted=read.append)  # fmt: skip
    assert span.count == old
    assert sum(read) <= 2 * (min(old, new) + 2)  # about the shorter side, from each end


@pytest.mark.anyio
async def test_purge_takes_bounded_bites_and_leaves_letters_past_its_span(
    redis_server: RedisServer,
) -> None:
    # Real Redis only: XTRIM's `~ … LIMIT` takes whole nodes (fakeredis takes none, and the
    # exact XTRIM at the end takes everything: the same result in one bite).
    redis = connect(redis_server.url)
    await redis.flushall()
    await bury(redis, 1000)
    dead = DeadLetters(redis, KEYS)
    span = await dead.everything()
    [late] = await bury(redis, 1, first=1000)
    bites = [n async for n in dead.purge_batches(span, batch=250)]
    assert sum(bites) == 1000 and len(bites) >= 4 and max(bites) <= 250
    assert [d.id for d in await dead.oldest()] == [late]
    await redis.aclose()


@pytest.mark.anyio
async def test_purge_all_deletes_what_it_counted(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await bury(redis, 5)

    def confirm(question: str) -> bool:
        assert question == f"Delete 5 dead letters from {KEYS.dead}?"
        return True

    out, terminal = io.StringIO(), Terminal()
    assert await admin.purge_dead(redis, SETTINGS, None, False, confirm, out, err=terminal,
                                  batch=2) == 0  # fmt: skip
    assert out.getvalue() == "purged 5 dead letters\n"
    assert "purging " in terminal.getvalue() and "5/5 100%" in terminal.getvalue()
    assert await redis.xlen(KEYS.dead) == 0
    out = io.StringIO()
    assert await admin.purge_dead(redis, SETTINGS, 60.0, True, confirm, out) == 0
    assert out.getvalue() == "no dead letters to purge\n"


@pytest.fixture
def cli_redis(cli_env: redis_sync.Redis) -> redis_sync.Redis:
    for n in range(25):
        cli_env.xadd(KEYS.dead, letter(n))  # type: ignore[arg-type]
    return cli_env


def test_cli_requeue_all_ends_with_one_summary_line_and_no_bar_off_a_terminal(
    cli_redis: redis_sync.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dead", "requeue", "--all"]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("requeued 25 dead letters\n", "")
    assert (cli_redis.xlen(KEYS.stream), cli_redis.xlen(KEYS.dead)) == (25, 0)


def test_cli_requeue_verbose_prints_each_id_then_the_summary(
    cli_redis: redis_sync.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dead", "requeue", "--all", "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 26 and all(re.fullmatch(r"requeued \S+ as \S+", x) for x in lines[:25])
    assert lines[25] == "requeued 25 dead letters"


def test_cli_draws_a_bar_on_a_terminal_stderr(
    cli_redis: redis_sync.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["dead", "purge", "--yes"]) == 0
    assert "purging " in terminal.getvalue() and "25/25 100%" in terminal.getvalue()
    assert capsys.readouterr().out == "purged 25 dead letters\n"


def test_cli_list_all_and_count(
    cli_redis: redis_sync.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dead", "list", "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 25
    assert main(["dead", "list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 21  # --count 20 by default, and a header
    assert main(["dead", "list", "--count", "3", "--all"]) == 2
    assert "--count or --all" in capsys.readouterr().err


def test_cli_list_into_a_closed_pipe_stops_quietly(
    cli_redis: redis_sync.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class ClosedPipe(io.StringIO):  # `dead list --all | head`, once head has had its lines
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["dead", "list", "--all"]) == 1
    assert capsys.readouterr().err == ""  # not "Redis at …: Broken pipe"
