"""The API steers the fleet (RATE_HEADERS, RATE_ADAPT), against an API that enforces its own
quota (the mock API's `--quota`; its log of calls is the observer):

    python -m benchmarks.headers [--smoke] [--out DIR]

- announced: the API allows 20 per 2 s (fixed windows of the wall clock, 429 beyond) and says
  so in `X-RateLimit-*`; the workers are configured at 200/1s, 3 workers x 16. The 429s of the
  whole run, against the calls that had reached the API before the fleet recorded its first
  announcement; every task done; the run's time against the API's ideal (every window full from
  the first call on).
- switched: the same API, saying so in `RateLimit-Policy`/`RateLimit`, drops to 10 per 2 s in
  the middle of the run. The 429s after the switch, against the calls in flight at it.
- adapt: an API that allows 10/1s and answers 429 without a word beyond; the workers at 100/1s
  with RATE_ADAPT=true. After the first 10 s: the share of 429s and the successes per second.

Writes `headers.md` (a table) to --out (default: benchmarks/).
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ratedispatch.devtools.audit import Call

from .report import write_table
from .stack import RESULTS, Stack

HERE = Path(__file__).parent
TERMS = "rate:external:api:terms"
DEAD = "external:api:tasks:dead:stream"  # the default API's limits hash (limits/heard.lua: `api`)


@dataclass(frozen=True)
class Sizes:
    tasks: int = 600
    switch_after: float = 24.0
    adapt_tasks: int = 520
    adapt_seconds: float = 50.0
    workers: int = 3


SMOKE = Sizes(tasks=60, switch_after=3.0, adapt_tasks=40, adapt_seconds=4.0, workers=2)


class FirstWord:
    """Watches Redis for the first announcement the fleet records (its `heard_at`, Redis ms),
    from before the workers start."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.heard_at: float | None = None  # Redis time, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.heard_at is None:
            value = cast(bytes | None, self._stack.redis.hget(TERMS, "api"))
            if value:
                self.heard_at = int(value.decode().split(":")[5]) / 1000
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def redis_minus_monotonic(stack: Stack) -> float:
    """Redis's clock (the wall clock here) less time.monotonic(), the mock's log clock."""
    seconds, micros = stack.redis.time()
    return seconds + micros / 1e6 - time.monotonic()


def wait_done(stack: Stack, count: int, timeout: float) -> int:
    """Wait until `count` results (or the timeout); how many there are."""
    deadline = time.monotonic() + timeout
    while (done := int(stack.redis.xlen(RESULTS))) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return done


def ideal_seconds(first_wall: float, tasks: int, count: int, window: float) -> float:
    """From the first call, the time by which an API of `count` per fixed `window` of the wall
    clock could have seen its last task: every window full, from the first call's on."""
    windows = math.ceil(tasks / count)
    boundary = (first_wall // window + 1) * window
    return boundary + (windows - 2) * window - first_wall if windows > 1 else 0.0


@dataclass(frozen=True)
class Announced:
    rejected: int  # 429s in the whole run
    before_first_word: int  # calls at the API before the fleet recorded its first announcement
    done: int
    ok: int
    seconds: float  # first call to last success
    ideal: float


def announced(sizes: Sizes) -> Announced:
    env = {"RATEDISPATCH_LIMITS": "200/1s", "RATEDISPATCH_CONCURRENCY": "16"}
    mock = ["--quota", "20/2", "--announce", "x-ratelimit", "--latency", "0.01"]
    with Stack(env, mock_args=mock) as stack:
        offset = redis_minus_monotonic(stack)
        stack.add_tasks(sizes.tasks)
        word = FirstWord(stack)
        stack.start_workers(sizes.workers)
        done = wait_done(stack, sizes.tasks, 60 + sizes.tasks / 10 * 2 * 1.5)
        word.stop()
        calls = stack.stop_api()
    ok = [c for c in calls if c.status == 200]
    first = calls[0].at
    heard = word.heard_at - offset if word.heard_at is not None else math.inf
    return Announced(
        rejected=sum(c.status == 429 for c in calls),
        before_first_word=sum(c.at <= heard for c in calls),
        done=done,
        ok=len(ok),
        seconds=ok[-1].at - first,
        ideal=ideal_seconds(first + offset, sizes.tasks, 20, 2.0),
    )


@dataclass(frozen=True)
class Switched:
    rejected_after: int  # 429s after the switch
    in_flight_at_switch: int  # calls that reached the API less than its latency before it
    rejected_before: int
    done: int


def switched(sizes: Sizes) -> Switched:
    latency = 0.01
    env = {"RATEDISPATCH_LIMITS": "200/1s", "RATEDISPATCH_CONCURRENCY": "16"}
    mock = ["--quota", "20/2", "--announce", "draft", "--latency", str(latency),
            "--switch", f"10/2@{sizes.switch_after}"]  # fmt: skip
    with Stack(env, mock_args=mock) as stack:
        stack.add_tasks(sizes.tasks)
        stack.start_workers(sizes.workers)
        done = wait_done(stack, sizes.tasks, 60 + sizes.tasks / 5 * 2 * 1.5)
        calls = stack.stop_api()
    switch = calls[0].at + sizes.switch_after
    return Switched(
        rejected_after=sum(c.status == 429 and c.at >= switch for c in calls),
        in_flight_at_switch=sum(switch - latency < c.at <= switch for c in calls),
        rejected_before=sum(c.status == 429 and c.at < switch for c in calls),
        done=done,
    )


@dataclass(frozen=True)
class Adapted:
    rejected_share: float  # of the calls after the first 10 s
    ok_per_second: float  # after the first 10 s
    rejected_first_10s: int
    calls_after: int
    dead: int  # tasks dead-lettered (429s spend attempts)


def adapted(sizes: Sizes) -> Adapted:
    env = {"RATEDISPATCH_LIMITS": "100/1s", "RATEDISPATCH_CONCURRENCY": "16",
           "RATEDISPATCH_RATE_ADAPT": "true"}  # fmt: skip
    mock = ["--quota", "10/1", "--bare", "--latency", "0.01"]
    settle = min(10.0, sizes.adapt_seconds / 2)
    with Stack(env, mock_args=mock) as stack:
        stack.add_tasks(sizes.adapt_tasks)
        stack.start_workers(2)
        deadline = time.monotonic() + 30
        while not stack.redis.xlen(RESULTS) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(sizes.adapt_seconds)
        dead = int(stack.redis.xlen(DEAD))
        calls: list[Call] = stack.stop_api()
    first = calls[0].at
    after = [c for c in calls if first + settle <= c.at <= first + sizes.adapt_seconds]
    span = after[-1].at - after[0].at
    return Adapted(
        rejected_share=sum(c.status == 429 for c in after) / len(after),
        ok_per_second=sum(c.status == 200 for c in after) / span,
        rejected_first_10s=sum(c.status == 429 and c.at < first + settle for c in calls),
        calls_after=len(after),
        dead=dead,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.headers")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else Sizes()
    one = announced(sizes)
    two = switched(sizes)
    three = adapted(sizes)
    rows = [
        (f"announced X-RateLimit 20/2s, workers at 200/1s ({sizes.workers} x 16), {sizes.tasks} "
         "tasks: 429s in the whole run", "<= calls before the first word",
         f"{one.rejected} (calls at the API before the first announcement was recorded: "
         f"{one.before_first_word})"),
        ("  tasks done (results), calls answered 200", f"{sizes.tasks}",
         f"{one.done}, {one.ok}"),
        ("  time from the first call to the last success ÷ the API's ideal", "<= 1.1",
         f"{one.seconds / one.ideal:.3f} ({one.seconds:.1f} s ÷ {one.ideal:.1f} s)"),
        (f"switched 20/2s -> 10/2s at {sizes.switch_after:g} s (RateLimit-Policy): 429s after "
         "the switch", "<= calls in flight at it",
         f"{two.rejected_after} (in flight: {two.in_flight_at_switch}; 429s before it: "
         f"{two.rejected_before}; tasks done {two.done} of {sizes.tasks})"),
        ("adapt: API 10/1s with bare 429s, workers at 100/1s: share of 429s after the first "
         "10 s", "< 10%",
         f"{100 * three.rejected_share:.1f}% of {three.calls_after} calls (429s in the first "
         f"10 s: {three.rejected_first_10s}; tasks dead-lettered: {three.dead})"),
        ("  successes per second after the first 10 s", ">= 8.0",
         f"{three.ok_per_second:.2f}"),
    ]  # fmt: skip
    command = "python -m benchmarks.headers" + (" --smoke" if args.smoke else "")
    write_table(args.out / "headers.md", "The API's own signals", command, rows)
    for name, target, value in rows:
        print(f"{name}: {value} (target {target})")


if __name__ == "__main__":
    main()
