"""Redis refusing commands for a while (OOM at maxmemory, MISCONF, BUSY, LOADING, READONLY...) is an
outage a worker rides out: one log line per episode, /healthz says why, nothing lost or repeated,
and a script Redis refuses changes nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
import redis as redis_sync
from redis import exceptions as rexc

from ratedispatch.connection import connect
from ratedispatch.guard import RedisGuard, refusal
from ratedispatch.queue import Success, TakeStatus

from .conftest import make_settings
from .e2e_support import ApiServer, Workers, wait_for
from .helpers import add_tasks, dispatcher_for, index_all
from .redis_server import RedisServer, free_port

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM"),
        (
            rexc.ResponseError("MISCONF Redis is configured to save RDB snapshots, but..."),
            "MISCONF",
        ),
        (rexc.ResponseError("BUSY Redis is busy running a script."), "BUSY"),
        (rexc.BusyLoadingError("Redis is loading the dataset in memory"), "LOADING"),
        (rexc.ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (rexc.MasterDownError("Link with MASTER is down"), "MASTERDOWN"),
        (rexc.TryAgainError("Multiple keys request during rehashing of slot"), "TRYAGAIN"),
        (rexc.ClusterDownError("The cluster is down"), "CLUSTERDOWN"),
        (rexc.ResponseError("ERR wrong number of arguments for 'xadd' command"), None),
        (rexc.ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
        (rexc.ResponseError("NOGROUP No such key"), None),
    ],
)
def test_the_errors_that_mean_redis_refuses_for_now(error: Exception, code: str | None) -> None:
    assert refusal(error) == code


async def test_a_refusal_is_retried_with_one_line_each_way_and_said_while_it_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = RedisGuard("redis://:secret@127.0.0.1:1/0", max_delay=0.01)
    seen: list[str | None] = []

    def refusing(times: int) -> Callable[[], Awaitable[str]]:
        async def op() -> str:
            seen.append(guard.trouble)
            if len(seen) <= times:
                raise rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
            return "done"

        return op

    with caplog.at_level(logging.WARNING, logger="ratedispatch.redis"):
        assert await guard.run(refusing(5), "taking a slot") == "done"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "refuses commands (OOM command not allowed" in lines[0]
    assert "during taking a slot" in lines[0] and "secret" not in lines[0]
    assert "accepts commands again" in lines[1]
    assert seen[0] is None and all("OOM" in (t or "") for t in seen[1:-1])
    assert guard.trouble is None and not guard.refused
    assert guard.recovered_within(5.0), "right after a refusal, nothing is reclaimed"


async def test_a_refusal_ends_when_what_was_refused_succeeds_not_at_a_read_meanwhile() -> None:
    guard = RedisGuard("redis://127.0.0.1:1/0", max_delay=0.01)
    memory_full = True

    async def take() -> str:  # a write: refused while memory is full
        if memory_full:
            raise rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        return "taken"

    async def read() -> str:  # a read (or a write that frees memory): answered all along
        return "read"

    async with anyio.create_task_group() as tg:
        tg.start_soon(guard.run, take, "taking a slot")
        await anyio.sleep(0.05)
        assert guard.refused
        assert await guard.run(read, "taking a slot") == "read"  # the same label, too
        assert guard.refused and guard.trouble, "a read ends nothing"
        memory_full = False
    assert not guard.refused and guard.trouble is None


async def test_a_replica_drops_the_pool_and_a_refused_group_creation_is_ridden_out() -> None:
    resets: list[int] = []

    async def reset() -> None:
        resets.append(1)

    errors = iter(
        [
            rexc.ReadOnlyError("You can't write against a read only replica."),
            rexc.ResponseError("NOGROUP No such key 'stream' or consumer group 'g'"),
        ]
    )
    recreated: list[int] = []

    async def recreate() -> None:
        recreated.append(1)
        if len(recreated) == 1:  # the first try to create the group meets the replica too
            raise rexc.ReadOnlyError("You can't write against a read only replica.")

    guard = RedisGuard("redis://127.0.0.1:1/0", on_nogroup=recreate, reset=reset, max_delay=0.01)

    async def op() -> str:
        for error in errors:
            raise error
        return "done"

    assert await guard.run(op, "reading new tasks") == "done"
    assert len(resets) == 2, "READONLY twice: the pool was dropped each time"
    assert len(recreated) == 1


async def test_closing_a_client_closes_its_connections(redis_server: RedisServer) -> None:
    watcher = redis_sync.Redis.from_url(redis_server.url)
    before = len(watcher.client_list())
    redis = connect(redis_server.url)

    async def ping() -> None:
        await redis.ping()

    async with anyio.create_task_group() as tg:  # at once: five connections in the pool
        for _ in range(5):
            tg.start_soon(ping)
    assert len(watcher.client_list()) > before
    await redis.aclose()
    await anyio.lowlevel.checkpoint()
    wait_for(lambda: len(watcher.client_list()) == before, 5, "the connections to close")


def snapshot(client: redis_sync.Redis) -> dict[str, Any]:
    """Everything a script could change: every key's value, and who holds which entry with
    how many deliveries (idle times left out: they change by themselves)."""
    keys = sorted(cast(list[bytes], client.keys("*")))
    state: dict[str, Any] = {k.decode(): (client.type(k), client.dump(k)) for k in keys}
    for key in keys:
        if client.type(key) == b"stream":
            for group in client.xinfo_groups(key):
                rows = client.xpending_range(key, group["name"], "-", "+", 100_000)
                state[f"{key.decode()} pel"] = [
                    (r["message_id"], r["consumer"], r["times_delivered"]) for r in rows
                ]
    return state


@pytest.fixture
def tiny(own_redis_server: RedisServer) -> redis_sync.Redis:
    client = redis_sync.Redis.from_url(own_redis_server.url)
    client.config_set("maxmemory-policy", "noeviction")
    return client


def refuse_writes(client: redis_sync.Redis, refuse: bool) -> None:
    """maxmemory 1 byte: every write that could add memory is refused with OOM."""
    client.config_set("maxmemory", "1" if refuse else "0")


async def test_scripts_refused_for_oom_change_nothing_and_run_once_memory_is_freed(
    own_redis_server: RedisServer, tiny: redis_sync.Redis
) -> None:
    redis = connect(own_redis_server.url)
    settings = make_settings(redis_url=own_redis_server.url, rate_limit=100)
    dispatcher = dispatcher_for(settings, redis)  # its health says what the guard heard
    queue = dispatcher.queue
    await queue.ensure_group()
    await add_tasks(redis, settings, *["normal"] * 12)
    await index_all(queue)
    first = await queue.take(4)
    assert first.status is TakeStatus.GRANTED
    before = snapshot(tiny)
    refuse_writes(tiny, True)
    done: dict[str, bool] = {}

    async def attempt(name: str, op: Callable[[], Awaitable[object]]) -> None:
        done[name] = False
        with anyio.move_on_after(0.5):  # the guard retries for as long as Redis refuses
            await op()
            done[name] = True

    successes = [Success(g.entry.id, 200, 5, g.attempt, g.stamp) for g in first.grants]
    await attempt("take", lambda: queue.take(4))
    assert dispatcher.guard.refused and "OOM" in (dispatcher.guard.trouble or "")
    healthy, detail = dispatcher.health()
    assert not healthy and "refuses commands (OOM" in detail and "queue/take.lua" in detail
    # A take that records successes and may start calls is refused whole: recording them first
    # (a write that frees memory) must not let its grants through.
    await attempt("take recording", lambda: queue.take(4, successes=successes[:2]))
    await attempt("acks", lambda: queue.ack_many(successes[:2]))
    await attempt(
        "bury",
        lambda: queue.bury(first.grants[2].entry.id, "no", last_status="400", attempts=1),
    )
    await attempt(
        "retry",
        lambda: queue.retry_later(
            first.grants[3].entry.id, first.grants[3].member, 1.0, stamp="", answered=0.0
        ),
    )
    refused = [name for name, ok in done.items() if not ok]
    # Redis refuses a script at its first write that could add memory, before it has written
    # anything; a script whose first write frees memory (recording successes, with nothing to
    # take) is let through whole, since stopping it later would leave it half done.
    assert "take" in refused and "take recording" in refused and "bury" in refused
    after = snapshot(tiny)
    if set(refused) == set(done):
        assert after == before, "a refused script changed something"
    refuse_writes(tiny, False)
    assert (await queue.take(4)).status is TakeStatus.GRANTED
    assert await queue.bury(first.grants[2].entry.id, "no", last_status="400", attempts=1)
    await redis.aclose()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.e2e
@pytest.mark.parametrize("when", ["at start-up", "in the middle of a backlog"])
def test_a_worker_under_maxmemory_stays_up_and_finishes_every_task_once_memory_is_freed(
    own_redis_server: RedisServer, tiny: redis_sync.Redis, tmp_path: Path, when: str
) -> None:
    from .test_e2e import RESULTS, add_backlog, worker_env

    with ApiServer(delay=0.01) as api:
        tasks = add_backlog(tiny, ["high", "normal", "low", "normal"] * 100)
        if when == "at start-up":
            refuse_writes(tiny, True)  # creating the group is refused too
        env = worker_env(own_redis_server.url, api, RATE_LIMIT=40, RATE_WINDOW_SECONDS=0.5)
        pool = Workers(tmp_path, env)
        ports = [free_port(), free_port()]
        for port in ports:
            pool.start(1, RATEDISPATCH_METRICS_PORT=str(port))
        try:
            if when == "in the middle of a backlog":
                wait_for(lambda: tiny.xlen(RESULTS) >= 100, 60, "100 results")
                refuse_writes(tiny, True)
            wait_for(
                lambda: all("refuses commands (OOM" in pool.log(n) for n in (0, 1)),
                30,
                "each worker's refusal line",
            )
            calls_during = len(api.snapshot())
            for port in ports:
                wait_for(lambda p=port: healthz(p)[0] == 503, 30, "/healthz to say 503")  # type: ignore[misc]
                _, body = healthz(port)
                assert "refuses commands (OOM" in body["detail"] and not body["ok"]
            status_json = subprocess.run(
                [sys.executable, "-m", "ratedispatch", "status", "--json"],
                env={**os.environ, "RATEDISPATCH_REDIS_URL": own_redis_server.url},
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert status_json.returncode == 0, status_json.stderr
            assert json.loads(status_json.stdout)["stream"] == "external:api:tasks:stream"
            assert pool.alive() == [0, 1]
            assert len(api.snapshot()) - calls_during <= 2 * 8, "no call it cannot record"
            during = len(api.snapshot()) - calls_during
            done_before = int(tiny.xlen(RESULTS))
            refuse_writes(tiny, False)
            freed = time.monotonic()
            wait_for(lambda: tiny.xlen(RESULTS) >= len(tasks), 90, "every task's result")
            finish = time.monotonic() - freed
            assert all(healthz(port)[0] == 200 for port in ports)
            codes = pool.terminate_all()
            logs = [pool.log(n) for n in (0, 1)]
        finally:
            pool.terminate_all()
        calls = api.called_per_task()
    assert codes == [0, 0]
    assert set(calls) == set(tasks)
    assert [t for t, n in calls.items() if n > 1] == [], "no call repeats"
    assert tiny.xlen("external:api:tasks:dead:stream") == 0
    for log in logs:
        assert log.count("refuses commands") == 1, log
        assert "accepts commands again" in log and "Traceback" not in log
    print(
        f"\nrefusal {when}: {done_before} of {len(tasks)} done when memory was freed, "
        f"{during} calls answered during the refusal, the rest done {finish:.1f}s after; "
        "0 repeated, 0 dead"
    )
