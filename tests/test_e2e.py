"""Real `ratedispatch worker` processes, a real redis-server, a local HTTP API watching every call.

Each test prints its figures (`pytest -m e2e -s` shows them)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import cast

import pytest
import redis as redis_sync

from ratedispatch.devtools.audit import Call, busiest, first_window_of, fixed_windows

from .e2e_support import ApiServer, wait_for, workers
from .redis_server import RedisServer

pytestmark = pytest.mark.e2e

STREAM = "external:api:tasks:stream"
RESULTS = "external:api:results:stream"
DEAD = "external:api:tasks:dead:stream"
# How much later than its slot the local API may see a call (scheduling on 2 busy cores), and
# the very first call (a fresh worker process opening its first connection).
OBSERVER_JITTER = 0.05
COLD_START = 0.25


def worker_env(redis_url: str, api: ApiServer, **settings: object) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "API_BASE_URL": api.url,
        "RATE_LIMIT": 20,
        "RATE_WINDOW_SECONDS": 1,
        "CONCURRENCY": 8,
        "HTTP_TIMEOUT_SECONDS": 1,
        "RECLAIM_IDLE_SECONDS": 2,
        "MAX_ATTEMPTS": 3,
        "RETRY_BACKOFF_SECONDS": 0.05,
        "RETRY_BACKOFF_MAX_SECONDS": 0.5,
        "SHUTDOWN_GRACE_SECONDS": 5,
        "METRICS_PORT": 0,
    }
    env.update(settings)
    return {f"RATEDISPATCH_{k}": str(v) for k, v in env.items()}


def add_backlog(client: redis_sync.Redis, priorities: list[str]) -> dict[str, str]:
    """XADD one task per priority, as any producer would; returns entry id -> priority."""
    ids = {}
    for i, priority in enumerate(priorities):
        entry_id = cast(
            bytes,
            client.xadd(STREAM, {"endpoint": f"/t/{i}", "priority": priority, "prio": priority}),
        )
        ids[entry_id.decode()] = priority
    return ids


def entries(client: redis_sync.Redis, stream: str) -> list[dict[bytes, bytes]]:
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    return [fields for _, fields in rows]


def results(client: redis_sync.Redis) -> list[dict[bytes, bytes]]:
    return entries(client, RESULTS)


def windows_seen(api: ApiServer, window: float) -> list[list[Call]]:
    return fixed_windows(api.snapshot(), window, OBSERVER_JITTER, COLD_START)


def check_limit(api: ApiServer, limit: int, window: float) -> list[int]:
    counts = [len(w) for w in windows_seen(api, window)]
    assert max(counts) <= limit, f"calls per window {counts} exceed {limit}"
    return counts


def test_three_workers_hold_the_limit_honour_priority_and_call_each_task_once(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    rng = random.Random(3)
    priorities = ["high"] * 30 + ["normal"] * 40 + ["low"] * 30
    rng.shuffle(priorities)
    with ApiServer() as api:
        tasks = add_backlog(client, priorities)
        client.xadd(STREAM, {"endpoint": "//evil.example/x"})
        client.xadd(STREAM, {"endpoint": "/t/x", "status": "404"})
        env = worker_env(redis_server.url, api, API_TOKEN="s3cr3t-token")
        with workers(tmp_path, env, 3) as pool:
            wait_for(lambda: client.xlen(RESULTS) >= 102, 45, "102 results")
            codes = pool.terminate_all()
            logs = [pool.log(n) for n in range(3)]
        assert codes == [0, 0, 0]
        for log in logs:  # events only: no secret, and no line per successful call
            assert "s3cr3t-token" not in log and "'api_token': '***'" in log
            assert len(log.splitlines()) < 12, log
        calls = api.called_per_task()
        assert set(calls) == set(tasks) | {calls_of_404(client)}
        assert max(calls.values()) == 1, "a task was called twice"
        counts = check_limit(api, 20, 1.0)
        windows = windows_seen(api, 1.0)
        first = first_window_of(windows)
        by_priority = {
            p: [first[t] for t, q in tasks.items() if q == p] for p in ("high", "normal", "low")
        }
        assert max(by_priority["high"]) <= min(by_priority["normal"])
        assert max(by_priority["normal"]) <= min(by_priority["low"])
    statuses = sorted(r[b"status"] for r in results(client))
    assert statuses.count(b"ok") == 100 and statuses.count(b"dead") == 2
    reasons = " | ".join(f[b"reason"].decode() for f in entries(client, DEAD))
    assert "not a path beginning with a single '/'" in reasons and "404 Not Found" in reasons
    assert client.xpending(STREAM, "api-workers")["pending"] == 0
    full = sum(1 for c in counts[:-1] if c == 20)
    print(
        f"\nE2E limit/priority: {sum(counts)} calls in {len(counts)} windows {counts}; "
        f"{full}/{len(counts) - 1} windows before the last filled to the limit; "
        f"high in windows {min(by_priority['high']) + 1}-{max(by_priority['high']) + 1}, "
        f"normal {min(by_priority['normal']) + 1}-{max(by_priority['normal']) + 1}, "
        f"low {min(by_priority['low']) + 1}-{max(by_priority['low']) + 1}"
    )


def calls_of_404(client: redis_sync.Redis) -> str:
    [letter] = [f for f in entries(client, DEAD) if f[b"last_status"] == b"404"]
    return letter[b"original_id"].decode()


def test_kill_9_of_a_worker_loses_nothing(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    env_settings = {"RATE_LIMIT": 30, "CONCURRENCY": 10, "RECLAIM_IDLE_SECONDS": 1.5}
    with ApiServer(delay=0.3) as api:
        tasks = add_backlog(client, ["normal"] * 90)
        with workers(tmp_path, worker_env(redis_server.url, api, **env_settings), 3) as pool:
            wait_for(lambda: len(api.snapshot()) >= 20, 30, "20 calls")
            pool.kill(0)
            killed_at = time.monotonic()
            wait_for(lambda: client.xlen(RESULTS) >= 90, 45, "90 results")
            codes = pool.terminate_all()
        assert codes[1:] == [0, 0]
        calls = api.called_per_task()
        assert set(calls) == set(tasks), "a task was never called"
        repeated = [t for t, n in calls.items() if n > 1]
        # Only calls in flight in the killed worker may repeat: at most its concurrency, and
        # each repeat's first call started before the kill.
        assert len(repeated) <= 10
        assert all(min(c.at for c in api.snapshot() if c.task == t) < killed_at for t in repeated)
        check_limit(api, 30, 1.0)
    oks = [r[b"id"] for r in results(client) if r[b"status"] == b"ok"]
    assert sorted(oks) == sorted(t.encode() for t in tasks), "each task has exactly one result"
    assert client.xpending(STREAM, "api-workers")["pending"] == 0
    print(f"\nE2E kill -9: 90 tasks, 0 lost, {len(repeated)} called twice (in flight when killed)")


def test_a_redis_restart_and_dropped_connections_lose_nothing(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_sync.Redis.from_url(own_redis_server.url)
    with ApiServer(delay=0.02) as api:
        tasks = add_backlog(client, ["normal"] * 100)
        env = worker_env(own_redis_server.url, api, RATE_LIMIT=10, RATE_WINDOW_SECONDS=0.5)
        with workers(tmp_path, env, 3) as pool:
            wait_for(lambda: len(api.snapshot()) >= 20, 30, "20 calls")
            client.client_kill_filter(_type="normal", skipme=True)
            wait_for(lambda: len(api.snapshot()) >= 40, 30, "40 calls")
            own_redis_server.kill()
            time.sleep(1.0)  # the outage itself: Redis is down for a second
            own_redis_server.start()
            client = redis_sync.Redis.from_url(own_redis_server.url)
            wait_for(lambda: client.xlen(RESULTS) >= 100, 60, "100 results")
            codes = pool.terminate_all()
            logs = [pool.log(n) for n in range(3)]
        assert codes == [0, 0, 0]
        calls = api.called_per_task()
        assert set(calls) == set(tasks)
        repeated = [t for t, n in calls.items() if n > 1]
        assert repeated == [], "no worker crashed, so no call may repeat"
        check_limit(api, 10, 0.5)
    oks = sorted(r[b"id"] for r in results(client) if r[b"status"] == b"ok")
    assert oks == sorted(t.encode() for t in tasks)
    assert all("is unreachable" in log and "reachable again" in log for log in logs)
    assert all(log.count("is unreachable") <= 3 for log in logs), "one line per outage"
    print(f"\nE2E Redis restart: 100 tasks, 0 lost, 0 called twice; {count_calls(api)} calls")


def count_calls(api: ApiServer) -> int:
    return len(api.snapshot())


def test_sigterm_finishes_calls_in_flight_and_exits_0(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    with ApiServer(delay=1.0) as api:
        add_backlog(client, ["normal"] * 10)
        env = worker_env(
            redis_server.url, api, CONCURRENCY=4, HTTP_TIMEOUT_SECONDS=3, RECLAIM_IDLE_SECONDS=5
        )
        with workers(tmp_path, env, 1) as pool:
            wait_for(lambda: len(api.snapshot()) >= 4, 30, "4 calls in flight")
            started = time.monotonic()
            codes = pool.terminate_all()
            stopped_after = time.monotonic() - started
        assert codes == [0]
        assert len(api.snapshot()) == 4, "nothing new was taken after SIGTERM"
    assert len(results(client)) == 4
    # The other six stay in the stream for the next worker; the stopped one holds none of them.
    assert client.xlen(STREAM) == 6
    assert client.xpending_range(STREAM, "api-workers", "-", "+", 10, consumername="worker-0") == []
    assert stopped_after < 5


def test_unreachable_redis_at_start_is_one_clear_line_and_a_retry(tmp_path: Path) -> None:
    from .redis_server import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with ApiServer() as api, workers(tmp_path, worker_env(url, api), 1) as pool:
        wait_for(lambda: "is unreachable" in pool.log(0), 20, "the outage line")
        codes = pool.terminate_all()
        log = pool.log(0)
    assert codes == [0]
    assert "redis://:***@127.0.0.1" in log and "hunter2" not in log
    assert log.count("is unreachable") == 1
    assert "Traceback" not in log


def test_three_workers_keep_each_keys_limits_and_a_key_without_room_delays_no_other(
    client: redis_sync.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Keys by the entry field `prio` (the local API logs it): one big key queued first, then six
    # small ones; each key at 5/1s, the API at 30/1s.
    ids: dict[str, str] = {}
    for n in range(40):
        ids[cast(bytes, client.xadd(STREAM, {"endpoint": f"/b/{n}", "prio": "big"})).decode()] = (
            "big"
        )
    for small in range(6):
        for n in range(5):
            entry = client.xadd(STREAM, {"endpoint": f"/s/{n}", "prio": f"small-{small}"})
            ids[cast(bytes, entry).decode()] = f"small-{small}"
    with ApiServer() as api:
        env = worker_env(redis_server.url, api, LIMITS="30/1s", KEY_FIELD="prio", KEY_LIMITS="5/1s")
        del env["RATEDISPATCH_RATE_LIMIT"], env["RATEDISPATCH_RATE_WINDOW_SECONDS"]
        with workers(tmp_path, env, 3) as pool:
            wait_for(lambda: client.xlen(RESULTS) >= 70, 45, "70 results")
            assert pool.terminate_all() == [0, 0, 0]
        calls = api.snapshot()
    assert max(api.called_per_task().values()) == 1 and set(api.called_per_task()) == set(ids)
    start = min(c.at for c in calls)
    for key in set(ids.values()):
        times = [c.at for c in calls if c.priority == key]
        # Judged as the API saw them, less the local API's own lateness in logging a call.
        assert busiest(times, 1.0 - OBSERVER_JITTER) <= 5, key
    small_done = max(c.at for c in calls if c.priority != "big") - start
    big_done = max(c.at for c in calls if c.priority == "big") - start
    # 40 tasks at 5 a second take the big key over 7 s; the small keys do not wait for it.
    assert small_done < 3.0 < 7.0 < big_done
    assert client.xpending(STREAM, "api-workers")["pending"] == 0
    print(f"\nE2E keys: small keys done after {small_done:.2f}s, the big key after {big_done:.2f}s")
