"""`status` and dead letters, through their public functions and the CLI.

The Redis-backed tests run on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import anyio
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from ratedispatch.cli import main
from ratedispatch.keys import Keys
from ratedispatch.ops.dead import DeadLetters, UnknownDeadLetter, parse_duration
from ratedispatch.ops.status import Announced, Status, collect, render
from ratedispatch.queue import read_stream

from .conftest import make_settings
from .helpers import add_tasks, index_all, queue_for
from .redis_server import free_port

STATUS_FIELDS = {
    "stream", "group", "group_exists", "stream_length", "not_delivered", "pending", "waiting",
    "retrying", "in_flight", "dead_letters", "results", "window_used", "window_limit",
    "window_resets_in", "slots_busy", "slot_frees_in", "terms", "calls_in_flight", "consumers",
    "apis", "keys", "api_remaining", "api_reset_in", "api_limit", "api_left", "api_heard_ago",
    "api_terms", "adapt_factor", "adapted_limits",
}  # fmt: skip


@pytest.mark.anyio
async def test_status_before_any_worker_says_there_is_no_group(redis: Redis) -> None:
    settings = make_settings()
    await add_tasks(redis, settings, "high", "low")
    status = await collect(redis, settings)
    assert (status.group_exists, status.stream_length, status.not_delivered) == (False, 2, 2)
    assert "no consumer group yet" in render(status)
    assert set(json.loads(status.to_json())) == STATUS_FIELDS


@pytest.mark.anyio
async def test_status_counts_waiting_by_priority_in_flight_and_flags_dead_consumers(
    redis: Redis,
) -> None:
    settings = make_settings(rate_limit=10, reclaim_idle_seconds=0.1, http_timeout_seconds=0.05)
    dead_worker = queue_for(make_settings(consumer="gone-worker"), redis)
    await add_tasks(redis, settings, "high", "high", "normal", "low", "low", "low")
    await index_all(dead_worker)
    await dead_worker.take(1)  # one high task in flight, then the worker "died"
    await anyio.sleep(0.15)  # let it idle past RECLAIM_IDLE_SECONDS (time passing is the point)
    status = await collect(redis, settings)
    assert status.waiting == {"high": 1, "normal": 1, "low": 3}
    assert (status.pending, status.in_flight, status.retrying) == (6, 1, 0)
    assert status.not_delivered == 0
    assert (status.window_used, status.window_limit) == (1, 10)
    assert status.window_resets_in is not None and 0 < status.window_resets_in <= 1
    # Its unit is busy while its call is in flight: it frees a window (1 s) after its answer at
    # the soonest, or a window after its deadline if its worker is gone.
    assert status.slots_busy == 1 and status.slot_frees_in == 1.0
    assert [(t.term, t.used, t.limit) for t in status.terms] == [("10/1s", 1, 10)]
    assert status.calls_in_flight == 1
    [consumer] = status.consumers
    assert (consumer.name, consumer.pending, consumer.likely_dead) == ("gone-worker", 1, True)
    text = render(status)
    assert "waiting for a slot (high 1  normal 1  low 3)" in text
    assert "LIKELY DEAD" in text and "1/10 used" in text and "1/10 busy" in text


@pytest.mark.anyio
async def test_requeue_puts_the_original_fields_back_and_removes_the_letter(redis: Redis) -> None:
    settings = make_settings()
    queue = queue_for(settings, redis)
    await redis.xadd(settings.stream, {"endpoint": "/a", "reason": "mine", "n": "1"})
    [entry] = await queue.read_new(10, 0)
    await queue.bury(entry.id, "the API refused it", last_status="404", attempts=1)
    dead = DeadLetters(redis, Keys.from_settings(settings))
    [letter] = await dead.oldest()
    assert letter.fields["original_id"] == entry.id
    new_id = await dead.requeue(letter.id)
    assert await dead.oldest() == []
    [requeued] = await read_stream(redis, settings.stream)
    assert requeued.id == new_id
    # the producer's own field called "reason" survives; the dead letter's fields do not
    assert requeued.fields == {b"endpoint": b"/a", b"reason": b"mine", b"n": b"1"}
    with pytest.raises(UnknownDeadLetter):
        await dead.requeue(letter.id)
    with pytest.raises(UnknownDeadLetter):
        await dead.requeue("not-an-id")


@pytest.mark.anyio
async def test_purge_older_than_keeps_recent_dead_letters(redis: Redis) -> None:
    settings = make_settings()
    keys = Keys.from_settings(settings)
    await redis.xadd(keys.dead, {"reason": "old"}, id="1000-0")  # 1970: very old
    await redis.xadd(keys.dead, {"reason": "new"})
    dead = DeadLetters(redis, keys)
    assert await dead.count_older_than(parse_duration("7d")) == 1
    assert await dead.purge(parse_duration("7d")) == 1
    assert [d.fields["reason"] for d in await dead.oldest()] == ["new"]
    assert await dead.purge() == 1
    assert await dead.oldest() == []


def test_durations() -> None:
    assert [parse_duration(d) for d in ("90s", "15m", "12h", "7d", "2w", "1.5h")] == [
        90, 900, 43200, 604800, 1209600, 5400,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"e\.g\. 7d"):
        parse_duration("a week")


def test_cli_status_json_and_text(
    cli_env: redis_sync.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_env.xadd("external:api:tasks:stream", {"endpoint": "/a"})
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status) == STATUS_FIELDS and status["stream_length"] == 1
    assert main(["status"]) == 0
    assert "1 in the stream" in capsys.readouterr().out


def test_cli_dead_list_requeue_and_purge(
    cli_env: redis_sync.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = "external:api:tasks:dead:stream"
    assert main(["dead", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters"
    letter: dict[bytes | str, bytes | str] = {
        "endpoint": "/a", "original_id": "1-1", "reason": "404", "attempts": "1",
        "last_status": "404", "failed_at": "1700000000000",
    }  # fmt: skip
    first = cast(bytes, cli_env.xadd(dead, letter)).decode()  # type: ignore[arg-type]
    cli_env.xadd(dead, letter)  # type: ignore[arg-type]
    assert main(["dead", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["id"] == first and listed[0]["fields"]["endpoint"] == "/a"
    # one unknown id: exit 1, the other done (--verbose: a line per id, not just the summary)
    assert main(["dead", "requeue", first, "99-1", "--verbose"]) == 1
    captured = capsys.readouterr()
    assert f"requeued {first} as " in captured.out and "no dead letter with id 99-1" in captured.err
    assert cli_env.xlen("external:api:tasks:stream") == 1
    assert main(["dead", "purge"]) == 2  # no terminal to confirm on, and no --yes
    assert "pass --yes" in capsys.readouterr().err
    assert main(["dead", "purge", "--yes"]) == 0
    assert "purged 1 dead letters" in capsys.readouterr().out
    assert main(["dead", "requeue"]) == 2
    assert main(["dead", "purge", "--older-than", "soon", "--yes"]) == 2


def test_cli_commands_with_redis_unreachable_exit_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"redis://:pw@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", url)  # a password is never a flag
    for args in (["status"], ["dead", "list"], ["dead", "requeue", "--all"]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "redis://:***@127.0.0.1" in err, err


def test_status_is_a_dataclass_with_documented_fields() -> None:
    # `status --json` shows what the API announced beside the API's own fields.
    announced = set(Announced.__dataclass_fields__)
    assert announced <= STATUS_FIELDS
    assert set(Status.__dataclass_fields__) == (STATUS_FIELDS - announced) | {"announced"}
