"""Fault experiments: real worker processes, a real redis-server, a local API that logs every
call. Each prints its figures (`pytest -m faults -s`) and asserts the guarantees: nothing lost,
the limit never exceeded, repeats only of calls in flight in a killed worker."""

from __future__ import annotations

import glob
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis as redis_sync

from ratedispatch.devtools.audit import Report, check, fixed_windows

from ..e2e_support import ApiServer, Workers, wait_for, workers
from ..redis_server import RedisServer
from .proxy import Proxy

pytestmark = pytest.mark.faults

STREAM = "external:api:tasks:stream"
RESULTS = "external:api:results:stream"
DEAD = "external:api:tasks:dead:stream"
JITTER, COLD_START = 0.05, 0.25


def env_for(redis_url: str, api: ApiServer, **settings: object) -> dict[str, str]:
    values: dict[str, object] = {
        "REDIS_URL": redis_url, "API_BASE_URL": api.url, "RATE_LIMIT": 30,
        "RATE_WINDOW_SECONDS": 1, "CONCURRENCY": 8, "HTTP_TIMEOUT_SECONDS": 1,
        "RECLAIM_IDLE_SECONDS": 2, "MAX_ATTEMPTS": 3, "RETRY_BACKOFF_SECONDS": 0.1,
        "RETRY_BACKOFF_MAX_SECONDS": 0.5, "SHUTDOWN_GRACE_SECONDS": 5, "METRICS_PORT": 0,
    }  # fmt: skip
    values.update(settings)
    return {f"RATEDISPATCH_{k}": str(v) for k, v in values.items()}


def add(client: redis_sync.Redis, count: int, **fields: str) -> dict[str, str]:
    """XADD `count` tasks with mixed priorities; returns entry id -> priority."""
    rng = random.Random(count)
    tasks = {}
    for i in range(count):
        priority = fields.get("priority") or rng.choice(("high", "normal", "low"))
        entry = {"endpoint": f"/t/{i}", **fields, "priority": priority}
        entry_id = cast(bytes, client.xadd(STREAM, entry))  # type: ignore[arg-type]
        tasks[entry_id.decode()] = priority
    return tasks


def finished(client: redis_sync.Redis) -> dict[str, dict[bytes, bytes]]:
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(RESULTS))
    return {fields[b"id"].decode(): fields for _, fields in rows}


def all_finished(client: redis_sync.Redis, tasks: dict[str, str]) -> Callable[[], bool]:
    return lambda: set(tasks) <= set(finished(client))


def report(api: ApiServer, client: redis_sync.Redis, tasks: dict[str, str], limit: int,
           window: float = 1.0) -> Report:  # fmt: skip
    result = check(
        api.snapshot(), tasks, set(finished(client)), window=window, limit=limit,
        tolerance=JITTER, cold_start=COLD_START,
    )  # fmt: skip
    print(f"\n{result.summary()}")
    return result


def test_kill_9_of_random_workers_repeatedly_loses_nothing(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    rng = random.Random(9)
    kills: list[float] = []
    with ApiServer(delay=0.05) as api:
        tasks = add(client, 240)
        env = env_for(redis_server.url, api, RATE_LIMIT=40, RECLAIM_IDLE_SECONDS=1.5)
        with workers(tmp_path, env, 4) as pool:
            for round_ in range(1, 4):
                wait_for(lambda r=round_: len(api.snapshot()) >= 50 * r, 30, "calls")  # type: ignore[misc]
                pool.kill(rng.choice(pool.alive()))
                kills.append(time.monotonic())
                pool.start(1)
            wait_for(all_finished(client, tasks), 60, "every task finished")
            codes = [c for c in pool.terminate_all() if c != -9]
        result = report(api, client, tasks, 40)
    assert codes == [0] * len(codes)
    assert result.lost == [] and result.never_called == []
    assert result.busiest <= 40
    # Only calls in flight in a killed worker repeat: at most its concurrency per kill, and
    # each repeated task was first called before the last kill.
    assert len(result.called_more_than_once) <= 3 * 8
    first_call = {c.task: c.at for c in reversed(api.snapshot())}
    assert all(first_call[t] < kills[-1] for t in result.called_more_than_once)


def test_redis_connections_dropped_stalled_and_slowed_lose_nothing_and_repeat_nothing(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    proxy = Proxy(redis_server.port)
    try:
        with ApiServer(delay=0.02) as api:
            tasks = add(client, 150)
            env = env_for(proxy.url, api, RECLAIM_IDLE_SECONDS=3)
            with workers(tmp_path, env, 3) as pool:
                wait_for(lambda: len(api.snapshot()) >= 30, 30, "30 calls")
                proxy.drop(3.0)  # every connection cut, new ones refused: Redis unreachable for 3 s
                wait_for(lambda: len(api.snapshot()) >= 60, 30, "60 calls")
                proxy.stall(1.5)  # connections open, nothing forwarded
                wait_for(lambda: len(api.snapshot()) >= 90, 30, "90 calls")
                proxy.slow(0.01)  # 10 ms per chunk each way
                wait_for(lambda: len(api.snapshot()) >= 110, 30, "110 calls")
                proxy.slow(0)
                wait_for(all_finished(client, tasks), 60, "every task finished")
                codes = pool.terminate_all()
            result = report(api, client, tasks, 30)
    finally:
        proxy.close()
    assert codes == [0, 0, 0]
    assert result.lost == [] and result.never_called == []
    assert result.called_more_than_once == {}, "no worker crashed: no call may repeat"
    assert result.busiest <= 30


def test_api_faults_end_as_the_contract_says(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    modes = {
        "ok": ({}, "ok", "200"),
        "flaky": ({"mode": "flaky", "fail": "2"}, "ok", "200"),
        "429s": ({"mode": "429s"}, "ok", "200"),
        "429date": ({"mode": "429date"}, "ok", "200"),
        "huge": ({"mode": "huge"}, "ok", "200"),
        "slow": ({"mode": "slow", "sleep": "2"}, "dead", ""),
        "reset": ({"mode": "reset"}, "dead", ""),
        "404": ({"status": "404"}, "dead", "404"),
    }
    with ApiServer() as api:
        api.storm_until = time.monotonic() + 1.5  # a 5xx storm as the workers start
        tasks: dict[str, str] = {}
        expected: dict[str, tuple[str, str]] = {}
        for fields, status, http_status in modes.values():
            added = add(client, 4, priority="normal", **fields)
            tasks.update(added)
            expected.update(dict.fromkeys(added, (status, http_status)))
        env = env_for(redis_server.url, api, RATE_LIMIT=20, MAX_ATTEMPTS=5)
        with workers(tmp_path, env, 2) as pool:
            wait_for(all_finished(client, tasks), 90, "every task finished")
            codes = pool.terminate_all()
            logs = [pool.log(n) for n in range(2)]
        result = report(api, client, tasks, 20)
    assert codes == [0, 0], logs
    assert result.lost == [] and result.busiest <= 20
    outcomes = finished(client)
    for task, (status, http_status) in expected.items():
        got = outcomes[task]
        assert (got[b"status"].decode(), got[b"http_status"].decode()) == (status, http_status)
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(DEAD))
    letters = {f[b"original_id"].decode(): f for _, f in rows}
    last_statuses = {letters[t][b"last_status"].decode() for t, e in expected.items() if e[1] == ""}
    assert last_statuses <= {"TimeoutError", "RemoteProtocolError", "ReadError"}, last_statuses
    assert any("limits closed for every worker" in log for log in logs)


def test_operator_accidents_cost_only_what_was_removed(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    rate_key, limit = "rate:external:api", 10
    with ApiServer() as api:
        first = add(client, 60)
        env = env_for(redis_server.url, api, RATE_LIMIT=limit, RATE_WINDOW_SECONDS=0.5)
        with workers(tmp_path, env, 2) as pool:
            wait_for(lambda: len(api.snapshot()) >= 10, 30, "10 calls")
            client.script_flush()
            wait_for(lambda: len(api.snapshot()) >= 20, 30, "20 calls")
            client.set(rate_key, limit)  # a full window with no TTL: repaired, not wedged
            wait_for(lambda: len(api.snapshot()) >= 25, 30, "25 calls")
            client.delete(rate_key)  # the window's count is lost: the term still holds
            wait_for(lambda: len(api.snapshot()) >= 35, 30, "35 calls")
            client.delete(f"{rate_key}:terms")  # the term's count is lost: the counter holds
            deleted_at = [time.monotonic()]
            wait_for(lambda: len(api.snapshot()) >= 45, 30, "45 calls")
            client.delete(f"{rate_key}:flight")  # the calls in flight are forgotten
            deleted_at.append(time.monotonic())
            wait_for(lambda: len(api.snapshot()) >= 55, 30, "55 calls")
            client.xtrim(STREAM, maxlen=0, approximate=False)  # pending entries trimmed away
            later = add(client, 20)
            wait_for(all_finished(client, later), 30, "tasks added after the trim")
            client.xgroup_destroy(STREAM, "api-workers")
            last = add(client, 10)
            wait_for(all_finished(client, last), 30, "tasks added after the group was deleted")
            codes = pool.terminate_all()
        survivors = {**later, **last}
        result = report(api, client, survivors, limit, window=0.5)
    assert codes == [0, 0]
    assert result.lost == [] and result.never_called == []
    # Deleting the counter costs nothing; deleting the term's state or the flight at most one
    # extra window's worth, in the window it happened (the counter alone lets 2x through
    # across its boundary).
    windows = fixed_windows(api.snapshot(), 0.5, JITTER, COLD_START)
    for window in windows:
        overlaps = any(window[0].at - 0.5 <= at <= window[-1].at + 0.5 for at in deleted_at)
        assert len(window) <= (2 * limit if overlaps else limit), [len(w) for w in windows]
    trimmed = [t for t in first if t not in finished(client)]
    print(f"cost: {len(trimmed)} of {len(first)} tasks trimmed away before their call; "
          f"calls per window {[len(w) for w in windows]}")  # fmt: skip


def test_workers_with_skewed_clocks_share_one_window(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The window lives on Redis's clock: workers an hour ahead and an hour behind change
    nothing, and a Retry-After date is read against the API's own Date header."""
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is required in CI (apt-get install faketime)")
        pytest.skip("libfaketime is not installed")
    # Preloaded into the worker itself (the `faketime` wrapper would take our SIGTERM).
    skew = {"LD_PRELOAD": found[0], "DONT_FAKE_MONOTONIC": "1"}
    with ApiServer(delay=0.01) as api:
        tasks = add(client, 90)
        tasks.update(add(client, 6, priority="high", mode="429date"))
        env = env_for(redis_server.url, api)
        pool = Workers(tmp_path, env)
        try:
            pool.start(1, **skew, FAKETIME="+1h")
            pool.start(1, **skew, FAKETIME="-1h")
            pool.start(1)
            wait_for(all_finished(client, tasks), 60, "every task finished")
            codes = pool.terminate_all()
            ahead, behind = pool.log(0)[:13], pool.log(1)[:13]  # "YYYY-MM-DD HH"
        finally:
            for process in pool.processes:
                if process.poll() is None:
                    process.kill()
        result = report(api, client, tasks, 30)
    assert ahead != behind, "the workers' clocks were not skewed"
    assert codes == [0, 0, 0]
    assert result.lost == [] and result.busiest <= 30
    assert all(f[b"status"] == b"ok" for f in finished(client).values())
