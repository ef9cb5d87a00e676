"""One run of each scenario, on a fresh stack; each returns its figures (and the quota run its
calls, for the picture)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any, cast

from ratedispatch.devtools.audit import Call, fixed_windows
from tests.e2e_support import wait_for

from .report import trailing_counts
from .stack import STREAM, Stack, cpu_seconds, peak_rss_mb, percentile, sleep_until

NO_LIMIT = "1000000"  # RATE_LIMIT at most: far above what 2 cores can call in a second


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is: the full run, or a smoke run of a few seconds."""

    throughput_tasks: int = 20_000
    quota_tasks: int = 2_000
    quota_limit: int = 100
    window: float = 1.0
    priority_backlog: int = 1_000
    latency_tasks: int = 300
    memory_backlog: int = 100_000


SMOKE = Sizes(
    throughput_tasks=400,
    quota_tasks=60,
    quota_limit=20,
    window=0.5,
    priority_backlog=60,
    latency_tasks=20,
    memory_backlog=2_000,
)


def limited(limit: int, window: float) -> dict[str, str]:
    """Workers under a real limit, with the default CONCURRENCY."""
    return {
        "RATEDISPATCH_RATE_LIMIT": str(limit),
        "RATEDISPATCH_RATE_WINDOW_SECONDS": str(window),
        "RATEDISPATCH_CONCURRENCY": "16",
    }


def span(calls: Sequence[Call]) -> float:
    """Seconds from the first call the API saw to the last."""
    return calls[-1].at - calls[0].at if len(calls) > 1 else float("nan")


def throughput(
    sizes: Sizes,
    transport: str,
    workers: int = 2,
    concurrency: int = 8,
    limits: str | None = None,
    code: str | None = None,
) -> dict[str, float]:
    """Tasks/s with no effective limit (one term, or `limits` far above the load); Redis
    commands and worker CPU per task. `code`: a checkout whose workers to run instead."""
    n = sizes.throughput_tasks
    env = {
        "RATEDISPATCH_RATE_LIMIT": NO_LIMIT, "RATEDISPATCH_RATE_WINDOW_SECONDS": "1",
        "RATEDISPATCH_CONCURRENCY": str(concurrency), "RATEDISPATCH_HTTP_TRANSPORT": transport,
        "RATEDISPATCH_RESULTS_MAXLEN": str(2 * n),
    }  # fmt: skip
    if limits is not None:
        del env["RATEDISPATCH_RATE_LIMIT"], env["RATEDISPATCH_RATE_WINDOW_SECONDS"]
        env["RATEDISPATCH_LIMITS"] = limits
    if code is not None:
        env["PYTHONPATH"] = code
    with Stack(env) as stack:
        pids = stack.start_workers(workers)
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        stack.reset_commands()
        stack.add_tasks(n)
        stack.wait_results(n, timeout=60 + n / 100)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        commands = stack.commands() - n  # the producer's XADDs are not the workers' cost
        calls = stack.stop_api()
    return {
        "tasks_per_s": len(calls) / span(calls),
        "commands_per_task": commands / n,
        "cpu_ms_per_task": cpu * 1000 / n,
        "calls": len(calls),
    }


def bare(
    sizes: Sizes, transport: str, processes: int = 2, concurrency: int = 8
) -> dict[str, float]:
    """The baseline: the same client stack and concurrency calling the API with no Redis."""
    n = sizes.throughput_tasks
    with Stack({}) as stack:
        url = f"http://127.0.0.1:{stack.api_port}"
        command = [sys.executable, "-m", "benchmarks.bare", url, str(n // processes),
                   "--concurrency", str(concurrency), "--transport", transport]  # fmt: skip
        runs = [subprocess.Popen(command) for _ in range(processes)]
        if any(run.wait(60 + n / 100) for run in runs):
            raise RuntimeError("the bare client loop failed")
        calls = stack.stop_api()
    return {"tasks_per_s": len(calls) / span(calls)}


def quota(sizes: Sizes, workers: int = 4) -> tuple[dict[str, float], list[Call]]:
    """A backlog against the limit: the most calls in any window-length interval, and the
    total time against the ideal (N/limit - 1) windows."""
    n, limit, window = sizes.quota_tasks, sizes.quota_limit, sizes.window
    env = limited(limit, window)
    with Stack(env) as stack:
        stack.start_workers(workers)
        stack.add_tasks(n)
        stack.wait_results(n, timeout=30 + 3 * n / limit * window)
        calls = stack.stop_api()
    ideal = (n / limit - 1) * window
    busiest = most_in_any_interval(calls, window)
    # Where the time over the ideal goes, window by window: the spread of a window's calls at
    # the API, and how much later than a window after a call its slot's next call came (the
    # i-th call of a window against the i-th of the one before).
    windows = fixed_windows(calls, window, tolerance=0.05, cold_start=0.25)
    spreads = [w[-1].at - w[0].at for w in windows]
    reuses = [
        y.at - x.at - window
        for a, b in itertools.pairwise(windows)
        for x, y in zip(a, b, strict=False)
    ]
    return {
        "max_in_window_per_limit": busiest / limit,
        "busiest": busiest,
        "time_per_ideal": span(calls) / ideal,
        "calls": len(calls),
        "spread_ms": 1000 * median(spreads) if spreads else float("nan"),
        "first_spread_ms": 1000 * spreads[0] if spreads else float("nan"),
        "reuse_ms": 1000 * median(reuses) if reuses else float("nan"),
    }, calls


def most_in_any_interval(calls: Sequence[Call], length: float) -> int:
    """The most calls in any half-open interval [t, t + length), over every t."""
    return max(trailing_counts([c.at for c in calls], length), default=0)


def priority(sizes: Sizes, workers: int = 2) -> dict[str, float]:
    """A backlog of normal tasks, then one high task mid-window: how many windows it waits."""
    limit, window = sizes.quota_limit, sizes.window
    env = limited(limit, window)
    with Stack(env) as stack:
        stack.start_workers(workers)
        stack.add_tasks(sizes.priority_backlog)
        stack.wait_results(1, timeout=30)
        sleep_until(time.monotonic() + window * 0.4)  # land inside a window, not at its start
        added = stack.clock()
        [high] = stack.add_tasks(1, "high")

        def called() -> bool:  # acknowledged entries are deleted from the stream
            return not stack.redis.xrange(STREAM, high, high)

        wait_for(called, 30 + 3 * window, "the high task to be called")
        stack.stop_workers()
        calls = stack.stop_api()
    [call] = [c for c in calls if c.task == high]
    starts = [w[0].at for w in fixed_windows(calls, window, tolerance=0.05, cold_start=0.25)]
    return {
        "windows_waited": sum(1 for start in starts if added < start <= call.at),
        "seconds_waited": call.at - added,
    }


def latency(sizes: Sizes, workers: int = 2) -> dict[str, float]:
    """Idle workers, tasks added one at a time: XADD to the call's arrival at the API."""
    env = {"RATEDISPATCH_RATE_LIMIT": NO_LIMIT, "RATEDISPATCH_RATE_WINDOW_SECONDS": "1"}
    sent: dict[str, float] = {}
    # The mock API records arrivals to the microsecond; nginx's log has whole milliseconds.
    with Stack(env, api="mock") as stack:
        stack.start_workers(workers)
        stack.add_tasks(1)  # the first call of a process opens its connection: not measured
        stack.wait_results(1, timeout=30)
        next_at = time.monotonic()
        for _ in range(sizes.latency_tasks):
            next_at += 0.01
            sleep_until(next_at)
            at = stack.clock()
            entry_id = cast(bytes, stack.redis.xadd(STREAM, {"endpoint": "/t"})).decode()
            sent[entry_id] = at
        stack.wait_results(sizes.latency_tasks + 1, timeout=30)
        calls = stack.stop_api()
    waits = [(c.at - sent[c.task]) * 1000 for c in calls if c.task in sent]
    return {"p50_ms": percentile(waits, 50), "p99_ms": percentile(waits, 99)}


def memory(sizes: Sizes) -> dict[str, float]:
    """Peak RSS of one worker that has read a backlog of `memory_backlog` tasks."""
    env = limited(100, 1.0)
    with Stack(env) as stack:
        stack.add_tasks(sizes.memory_backlog)
        [pid] = stack.start_workers(1)

        def all_read() -> bool:
            groups: list[dict[str, Any]] = stack.redis.xinfo_groups(STREAM)
            return bool(groups[0]["lag"] == 0)

        wait_for(all_read, 120, "the backlog to be read")
        rss = peak_rss_mb(pid)
    return {"peak_rss_mb": rss}
