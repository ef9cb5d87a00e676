"""The Lua scripts: each one's header names its inputs as the Python side passes them, its
includes resolve, an error names the file and line it happened on, and no command argument
list is unpacked whole from an input of any length."""

from __future__ import annotations

import dataclasses
import re
import typing
from importlib.resources import files
from pathlib import Path

import pytest
from redis.asyncio import Redis

import ratedispatch.limits.limiter
import ratedispatch.ops.dead
import ratedispatch.queue.inputs  # noqa: F401  (declares the scripts)
from ratedispatch import scripts
from ratedispatch.queue import Success, TakeStatus
from ratedispatch.queue.entries import Take, UnknownReply
from ratedispatch.queue.inputs import TAKE, TakeArgs, TakeKeys
from ratedispatch.task import parse_entry

from .conftest import make_settings
from .helpers import index_all, limiter_for, queue_for, term_state

pytestmark = pytest.mark.anyio

PACKAGE = Path(str(files("ratedispatch")))
ARGV_USE = re.compile(r"ARGV\[(\d+)\]")


def script_paths() -> list[str]:
    """Every script (a file whose header names its inputs), as a path under the package."""
    found = []
    for path in PACKAGE.rglob("*.lua"):
        if re.search(r"^-- (KEYS|ARGV)\[", path.read_text(), re.M):
            found.append(path.relative_to(PACKAGE).as_posix())
    return sorted(found)


def test_every_script_is_declared_once() -> None:
    declared = sorted(d.path for d in scripts.DECLARED)
    assert declared == script_paths()


@pytest.mark.parametrize("declared", scripts.DECLARED, ids=lambda d: d.path)
def test_a_scripts_header_names_its_inputs_as_python_passes_them(
    declared: scripts.Declared[object, object],
) -> None:
    source = scripts.load(declared.path)
    for inputs, cls in ((source.keys, declared.keys), (source.argv, declared.args)):
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        assert [i.name for i in inputs] == [f.name for f in fields]
        assert [i.index for i in inputs] == list(range(1, len(inputs) + 1))
        hints = typing.get_type_hints(cls)
        for i, field in zip(inputs, fields, strict=True):
            is_tail = typing.get_origin(hints[field.name]) is not None and str(
                hints[field.name]
            ).startswith("collections.abc.Sequence")
            assert i.tail == is_tail, f"{declared.path}: {i.name}"
            assert not i.tail or i is inputs[-1], "only the last input can be a tail"
    own = (PACKAGE / declared.path).read_text()
    body = "\n".join(line for line in own.splitlines() if not line.startswith("--"))
    # Every ARGV the body reads is one the header names (a tail is read from its index on).
    named = {i.index for i in source.argv}
    assert {int(n) for n in ARGV_USE.findall(body)} <= named


def test_includes_resolve_once_each_and_before_the_script() -> None:
    source = scripts.load("queue/take.lua")
    files_in_order = list(dict.fromkeys(path for path, _ in source.origins))
    assert files_in_order[-1] == "queue/take.lua"
    # lua/chunks.lua is included by several includes of take.lua: it is there once.
    assert files_in_order.count("lua/chunks.lua") == 1
    assert files_in_order.index("lua/chunks.lua") < files_in_order.index("limits/flight.lua")
    assert source.text.count("local function call_chunked(") == 1


async def test_a_script_error_names_the_file_and_its_own_line(redis: Redis) -> None:
    take = TAKE.on(redis)
    answer = ("1-0", 200, 1, 1, "1", 1, 0, "")
    args = TakeArgs("w,5,1000", 0, 5, 0, "g", "me", "w", 10, 10, False, False, 1000, 0, False,
                    "1-0", "1-0", 1, "", "", 0, False, [answer])  # fmt: skip
    bad = dataclasses.replace(args, successes_then_fresh=[(*answer[:6], "not a number", "")])  # type: ignore[list-item]
    keys = TakeKeys("rate", "index", "retry", "s", "flight", "terms", "s")
    await redis.xgroup_create("s", "g", "0", mkstream=True)
    await take(keys, args)  # the good one runs
    with pytest.raises(scripts.ScriptError) as caught:
        await take(keys, bad)
    lines = (PACKAGE / "limits/limits.lua").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "call[4] >= 0" in text)
    assert f"limits/limits.lua:{line}" in str(caught.value)
    assert "user_script" not in str(caught.value)


def test_a_reply_code_the_code_does_not_know_is_an_error() -> None:
    with pytest.raises(UnknownReply, match="no such reply code"):
        Take.decode([[], [7, 0]], ())
    assert Take.decode([[], [0, 250]], ()).status is TakeStatus.FULL


BIG = 10_000


async def fill(redis: Redis, stream: str, n: int) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(stream, {"endpoint": f"/t/{i}", "priority": ("high", "low")[i % 2]})
        await pipe.execute()


def successes(take: Take) -> list[Success]:
    return [Success(g.entry.id, 200, 1, g.attempt, g.stamp) for g in take.grants]


# Lua's unpack() stops near 8000 values: every list a script sends on to Redis is chunked, so
# RATE_LIMIT and CONCURRENCY can be large (a take grants up to CONCURRENCY at once).
async def test_a_take_of_ten_thousand_indexed_tasks_and_their_acknowledgement(
    redis: Redis,
) -> None:
    # A long window: on fakeredis this many takes a while, and the slots must still be busy.
    settings = make_settings(
        rate_limit=3 * BIG, rate_window_seconds=60, concurrency=BIG, max_waiting=5 * BIG
    )
    queue = queue_for(settings, redis)
    await queue.ensure_group()
    await fill(redis, settings.stream, 2 * BIG)
    assert await index_all(queue) == 2 * BIG
    take = await queue.take(BIG)
    assert take.status is TakeStatus.GRANTED and len(take.grants) == BIG
    assert all(g.task is None and g.entry.fields for g in take.grants)
    assert await queue.ack_many(successes(take)) == [True] * BIG
    # Answered: out of the flight, and busy in the term for a window from their answers.
    assert await redis.zcard(queue.keys.flight) == 0
    assert (await term_state(limiter_for(settings, redis))).used == BIG
    assert await redis.xlen(settings.results_stream) == BIG


async def test_a_fast_path_take_of_ten_thousand_and_indexing_as_many(redis: Redis) -> None:
    settings = make_settings(rate_limit=3 * BIG, concurrency=BIG, max_waiting=5 * BIG)
    queue = queue_for(settings, redis)
    await queue.ensure_group()
    await fill(redis, settings.stream, BIG)
    fresh = [(e, parse_entry(e.id, e.fields)) for e in await queue.read_new(BIG, 0)]
    take = await queue.take(BIG, fresh, drained=True)
    assert take.fast and len(take.grants) == BIG
    await fill(redis, settings.stream, BIG)
    fresh = [(e, parse_entry(e.id, e.fields)) for e in await queue.read_new(BIG, 0)]
    take = await queue.take(1, fresh, drained=True)  # one called, the rest indexed
    assert len(take.grants) == 1
    assert await queue.index_size() == BIG - 1


async def test_indexing_ten_thousand_held_entries(redis: Redis) -> None:
    settings = make_settings(rate_limit=3 * BIG, concurrency=BIG, max_waiting=5 * BIG)
    queue = queue_for(settings, redis)
    await queue.ensure_group()
    await fill(redis, settings.stream, BIG)
    entries = await queue.read_new(BIG, 0)
    items = [(e.id, parse_entry(e.id, e.fields)) for e in entries]
    assert await queue.index_held(items, reread=False) == BIG
    assert await queue.index_size() == BIG
