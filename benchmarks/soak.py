"""Soak run: real workers under a steady stream of tasks, with faults injected on a timer.

    python -m benchmarks.soak --minutes 30

Starts its own redis-server (AOF, fsync always) behind a TCP proxy, a local API, and 4 worker
processes at a high limit; a producer adds tasks faster than the limit lets through; every
`--fault-every` seconds one fault is injected (kill -9 of a worker and a replacement, Redis
dropped or stalled by the proxy, Redis kill -9 and restart, a 5xx storm, SCRIPT FLUSH, the
counter left without a TTL). At the end it stops producing, lets the backlog drain, stops the
workers with SIGTERM, and prints the invariant checker's report. Exit code 1 if a task was lost,
the limit was exceeded, or a task was repeated without a kill to explain it.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

import redis as redis_sync

from benchmarks.stack import listening, read_calls
from ratedispatch.devtools.audit import check
from tests.e2e_support import Workers, wait_for
from tests.faults.proxy import Proxy
from tests.redis_server import RedisServer, free_port

STREAM = "external:api:tasks:stream"
RESULTS = "external:api:results:stream"
PRIORITIES = ("high", "normal", "low")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--limit", type=int, default=200, help="calls per 1 s window")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--produce", type=int, default=220, help="tasks added per second")
    parser.add_argument("--fault-every", type=float, default=45, help="seconds between faults")
    args = parser.parse_args()
    rng = random.Random(1)
    workdir = Path(tempfile.mkdtemp(prefix="ratedispatch-soak-"))
    server = RedisServer(workdir / "redis", appendonly=True)
    server.start()
    proxy = Proxy(server.port)
    client = redis_sync.Redis.from_url(server.url)
    tasks: dict[str, str] = {}
    enqueued: dict[str, float] = {}
    faults: list[tuple[float, str]] = []
    kills: list[float] = []
    producing = threading.Event()
    producing.set()

    def produce() -> None:
        period = 1.0 / args.produce
        next_at = time.monotonic()
        while producing.is_set():
            priority = rng.choice(PRIORITIES)
            try:
                entry_id = cast(bytes, client.xadd(STREAM, {"endpoint": "/soak", "prio": priority,
                                                             "priority": priority}))  # fmt: skip
                tasks[entry_id.decode()] = priority
                enqueued[entry_id.decode()] = time.monotonic()
            except redis_sync.RedisError:
                time.sleep(0.2)  # Redis is being restarted by a fault: try again
                continue
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    env = {
        "RATEDISPATCH_REDIS_URL": proxy.url, "RATEDISPATCH_RATE_LIMIT": str(args.limit),
        "RATEDISPATCH_RATE_WINDOW_SECONDS": "1", "RATEDISPATCH_CONCURRENCY": "16",
        "RATEDISPATCH_HTTP_TIMEOUT_SECONDS": "2", "RATEDISPATCH_RECLAIM_IDLE_SECONDS": "5",
        "RATEDISPATCH_MAX_ATTEMPTS": "8", "RATEDISPATCH_RETRY_BACKOFF_SECONDS": "0.2",
        "RATEDISPATCH_RETRY_BACKOFF_MAX_SECONDS": "5", "RATEDISPATCH_METRICS_PORT": "0",
        "RATEDISPATCH_SHUTDOWN_GRACE_SECONDS": "10",
        # every result is kept: the checker needs one for each task of the run
        "RATEDISPATCH_RESULTS_MAXLEN": str(int(args.produce * args.minutes * 60 * 2)),
    }  # fmt: skip
    # The API runs in a process of its own: an observer sharing a GIL with the producer and the
    # proxy would see calls late and misplace them between windows.
    api_port, api_log = free_port(), workdir / "api-calls.log"
    api = subprocess.Popen(
        [sys.executable, "-m", "ratedispatch.devtools.mockapi", "--host", "127.0.0.1", "--port",
         str(api_port), "--latency", "0.005", "--log", str(api_log), "--quiet"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: listening(api_port), 10, "the mock API")
    try:
        env["RATEDISPATCH_API_BASE_URL"] = f"http://127.0.0.1:{api_port}"
        pool = Workers(workdir, env)
        pool.start(args.workers)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        start = time.monotonic()
        end = start + args.minutes * 60
        kinds = ["kill", "drop", "stall", "redis-restart", "storm", "script-flush", "no-ttl"]
        n = 0
        try:
            while time.monotonic() + args.fault_every < end:
                time.sleep(args.fault_every)
                kind = kinds[n % len(kinds)]
                n += 1
                faults.append((time.monotonic() - start, kind))
                print(f"[{time.monotonic() - start:7.1f}s] fault: {kind}; "
                      f"{len(tasks)} tasks added", flush=True)  # fmt: skip
                if kind == "kill":
                    pool.kill(rng.choice(pool.alive()))
                    kills.append(time.monotonic())
                    pool.start(1)
                elif kind == "drop":
                    proxy.drop(3.0)
                elif kind == "stall":
                    proxy.stall(2.0)
                elif kind == "redis-restart":
                    server.kill()
                    time.sleep(1.0)
                    server.start()
                elif kind == "storm":
                    api.send_signal(signal.SIGUSR1)  # 503s for 3 s
                elif kind == "script-flush":
                    client.script_flush()
                elif kind == "no-ttl":
                    client.set("rate:external:api", args.limit)
            time.sleep(max(0.0, end - time.monotonic()))
            producing.clear()
            producer.join()
            print(f"producing stopped: {len(tasks)} tasks; draining", flush=True)
            # XLEN is cheap; reading every result is done once, at the end.
            wait_for(lambda: client.xlen(RESULTS) >= len(tasks), 900, "the backlog to drain")
        finally:
            producing.clear()
            codes = pool.terminate_all()
            proxy.close()
    finally:
        api.terminate()
        api.wait(10)
    calls = read_calls(api_log)
    done = finished(client)
    server.stop()
    report = check(calls, tasks, done, window=1.0, limit=args.limit, tolerance=0.05,
                   cold_start=0.25, enqueued=enqueued)  # fmt: skip
    repeated_after_kills = report.called_after_success
    elapsed = (calls[-1].at - calls[0].at) if calls else 0.0
    print(f"\nsoak: {args.minutes:g} min, {args.workers} workers, limit {args.limit}/s, "
          f"{len(faults)} faults ({', '.join(sorted({k for _, k in faults}))})")  # fmt: skip
    print(report.summary())
    print(f"calls per second overall {len(calls) / max(elapsed, 1e-9):.1f} (limit {args.limit}); "
          f"windows filled to the limit {sum(1 for w in report.windows if w == args.limit)}"
          f"/{len(report.windows)}; called again after a 2xx {len(repeated_after_kills)} after "
          f"{len(kills)} kills "
          f"(allowed ≤ {len(kills) * 16}: their calls in flight); "
          f"worker exit codes {codes}")  # fmt: skip
    ok = (
        not report.lost
        and report.busiest <= args.limit
        and len(repeated_after_kills) <= len(kills) * 16
    )
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


def finished(client: redis_sync.Redis) -> set[str]:
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(RESULTS))
    return {fields[b"id"].decode() for _, fields in rows}


if __name__ == "__main__":
    sys.exit(main())
