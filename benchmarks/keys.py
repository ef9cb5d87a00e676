"""Many tenants behind one API (key_field), against the API's own view (nginx's log):

    python -m benchmarks.keys [--smoke] [--out DIR] [--baseline]

- fairness: one key with a backlog of 20,000 tasks, then 1,000 small keys of 5 tasks each that
  arrive while it waits (160 tasks a second: with the big key's 50, more than the API's 200, so
  the keys take turns at the API's limit); each key's limit 50/1s. The time
  from enqueue to call of the small keys' tasks (p50, p99, max; the issue asks p99 <= 2 windows),
  and the calls per second the big key still gets meanwhile. With --baseline, the same without a
  key_field: one queue, in which the small keys' tasks wait behind the backlog.
- take cost with 1, 1,000 and 100,000 keys with tasks waiting: the time and Redis CPU per task of
  10,000 calls under a limit that never refuses, against an API without a key_field; and Redis
  memory per key with tasks waiting (the same tasks indexed with and without a key_field).

Writes `keys.md` (a table) to --out (default: benchmarks/).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ratedispatch.devtools.audit import Call, busiest

from .report import write_table
from .stack import RESULTS, STREAM, Stack, percentile

HERE = Path(__file__).parent
PREFIX = "rate:external:api:keyed."  # the default API's keyed prefix (queue/keyed.lua)


@dataclass(frozen=True)
class FairSizes:
    api_limits: str = "200/1s"
    key_limits: str = "50/1s"
    big: int = 20_000
    small_keys: int = 1_000
    per_small: int = 5
    # The small keys' tasks arrive at this rate: with the big key's 50/1s, more than the API's
    # 200/1s, so the API's limit is the bottleneck and the keys take turns at it.
    small_per_second: float = 160.0
    workers: int = 2


@dataclass(frozen=True)
class CostSizes:
    # (keys, tasks each): 1 and 1,000 keys keep every key waiting through the 10,000 calls.
    shapes: tuple[tuple[int, int], ...] = ((1, 12_000), (1_000, 12), (100_000, 2))
    calls: int = 10_000


SMOKE_FAIR = FairSizes(big=400, small_keys=40, per_small=5, small_per_second=160.0)
SMOKE_COST = CostSizes(shapes=((1, 300), (100, 3)), calls=200)


@dataclass(frozen=True)
class Fairness:
    small_p50: float
    small_p99: float
    small_max: float
    small_done: int
    big_per_second: float  # while the small keys arrive and are served
    all_per_second: float  # every call in that time
    busiest_second: int  # the most calls the API saw in any 1 s
    big_busiest_second: int


def added_at(call: Call) -> float:
    """When the task was added: its entry id (Redis's clock, the wall clock on this machine)."""
    return int(call.task.partition("-")[0]) / 1000


def fairness(sizes: FairSizes, *, keyed: bool) -> Fairness:
    env = {"RATEDISPATCH_LIMITS": sizes.api_limits, "RATEDISPATCH_CONCURRENCY": "16"}
    if keyed:
        env |= {"RATEDISPATCH_KEY_FIELD": "prio", "RATEDISPATCH_KEY_LIMITS": sizes.key_limits}
    small_total = sizes.small_keys * sizes.per_small
    with Stack(env) as stack:
        pipe = stack.redis.pipeline(transaction=False)
        for _ in range(sizes.big):
            pipe.xadd(STREAM, {"endpoint": "/t", "prio": "big"})
        pipe.execute()
        stack.start_workers(sizes.workers)
        small: set[str] = set()
        started = time.monotonic()
        for key in range(sizes.small_keys):
            due = started + key * sizes.per_small / sizes.small_per_second
            time.sleep(max(0.0, due - time.monotonic()))
            pipe = stack.redis.pipeline(transaction=False)
            for _ in range(sizes.per_small):
                pipe.xadd(STREAM, {"endpoint": "/t", "prio": f"k{key}"})
            small.update(i.decode() for i in pipe.execute())
        # Without keys the small tasks come after the whole backlog: wait for it, within reason.
        deadline = time.monotonic() + 30 + (0 if keyed else 1.5 * sizes.big / 200)
        done, after = 0, "-"
        while done < small_total and time.monotonic() < deadline:
            rows = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                stack.redis.xrange(RESULTS, min=after, count=5000),
            )
            if after != "-":
                rows = rows[1:]
            for entry_id, fields in rows:
                done += fields[b"id"].decode() in small
                after = entry_id.decode()
            time.sleep(0.05)
        calls = stack.stop_api()
    smalls = [c for c in calls if c.task in small]
    waits = [c.at - added_at(c) for c in smalls]
    first = min(added_at(c) for c in smalls)
    last = max(c.at for c in smalls)
    meanwhile = [c for c in calls if first <= c.at <= last]
    big = [c.at for c in meanwhile if c.priority == "big"]
    return Fairness(
        small_p50=percentile(waits, 50),
        small_p99=percentile(waits, 99),
        small_max=max(waits),
        small_done=len(smalls),
        big_per_second=len(big) / (last - first),
        all_per_second=len(meanwhile) / (last - first),
        busiest_second=busiest([c.at for c in calls], 1.0),
        big_busiest_second=busiest([c.at for c in calls if c.priority == "big"], 1.0),
    )


@dataclass(frozen=True)
class TakeCost:
    keys: int
    waiting: int
    ms_per_task: float
    redis_us_per_task: float
    commands_per_task: float
    memory: int  # used_memory with every task indexed


def redis_cpu(stack: Stack) -> float:
    info = stack.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def take_cost(keys: int, per_key: int, count: int, *, keyed: bool) -> TakeCost:
    """Index keys * per_key tasks with the limits closed (1/1h), then let `count` of them go with
    limits that never refuse, one worker, and read what they cost."""
    env = {"RATEDISPATCH_MAX_WAITING": "10000000", "RATEDISPATCH_CONCURRENCY": "32"}
    if keyed:
        env["RATEDISPATCH_KEY_FIELD"] = "prio"
    total = keys * per_key
    with Stack(env) as stack:
        for start in range(0, total, 5000):
            pipe = stack.redis.pipeline(transaction=False)
            for n in range(start, min(total, start + 5000)):
                pipe.xadd(STREAM, {"endpoint": "/t", "prio": f"k{n % keys}"})
            pipe.execute()
        assert stack.workers is not None
        stack.start_workers(1, RATEDISPATCH_LIMITS="1/1h")

        def waiting() -> int:
            if keyed:
                return sum(int(n) for n in stack.redis.hvals(f"{PREFIX}waiting"))
            return int(stack.redis.zcard("external:api:tasks:deferred"))

        deadline = time.monotonic() + 120 + total / 2000
        while waiting() < total - 1:
            assert time.monotonic() < deadline, f"{waiting()} of {total} indexed in time"
            time.sleep(0.1)
        stack.stop_workers()
        memory = int(stack.redis.info("memory")["used_memory"])
        want = min(count, total - 1)
        stack.reset_commands()
        cpu = redis_cpu(stack)
        stack.start_workers(1, RATEDISPATCH_LIMITS="1000000/1s")
        stack.wait_results(want + 1, 120 + want / 500)  # the one call of the closed limits too
        used = redis_cpu(stack) - cpu
        commands = stack.commands()
        # From the API's first call of the run to its last: the worker's start-up left out.
        calls = stack.stop_api()[1:]
    elapsed = calls[-1].at - calls[0].at
    return TakeCost(
        keys, total, 1000 * elapsed / (len(calls) - 1), 1e6 * used / want, commands / want, memory
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.keys")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--baseline", action="store_true", help="fairness without a key_field too")
    args = parser.parse_args()
    fair_sizes = SMOKE_FAIR if args.smoke else FairSizes()
    cost_sizes = SMOKE_COST if args.smoke else CostSizes()
    fair = fairness(fair_sizes, keyed=True)
    window = float(fair_sizes.api_limits.split("/")[1].removesuffix("s"))
    rows: list[tuple[str, str, str]] = [
        (f"fairness: {fair_sizes.small_keys:,} small keys of {fair_sizes.per_small} tasks arriving "
         f"at {fair_sizes.small_per_second:g}/s beside one key's {fair_sizes.big:,}-task backlog "
         f"(API {fair_sizes.api_limits}, each key {fair_sizes.key_limits}): small tasks' enqueue "
         "→ call, p50 / p99 / max (s)", f"p99 ≤ {2 * window:g}",
         f"{fair.small_p50:.2f} / {fair.small_p99:.2f} / {fair.small_max:.2f}"),
        ("small tasks called", f"{fair_sizes.small_keys * fair_sizes.per_small:,}",
         f"{fair.small_done:,}"),
        ("the big key meanwhile: calls per second (every call: per second)",
         f"the rest of {fair_sizes.api_limits}, at most its {fair_sizes.key_limits}",
         f"{fair.big_per_second:.1f} ({fair.all_per_second:.1f})"),
        ("the most calls in any 1 s: all / the big key",
         f"≤ {fair_sizes.api_limits.split('/')[0]} / ≤ {fair_sizes.key_limits.split('/')[0]}",
         f"{fair.busiest_second} / {fair.big_busiest_second}"),
    ]  # fmt: skip
    if args.baseline:
        plain = fairness(fair_sizes, keyed=False)
        rows.append(
            ("the same without a key_field (one queue): small tasks' enqueue → call, p50 / p99 / "
             "max (s); small tasks called", "-",
             f"{plain.small_p50:.2f} / {plain.small_p99:.2f} / {plain.small_max:.2f}; "
             f"{plain.small_done:,}")
        )  # fmt: skip
    rows += cost_rows(cost_sizes)
    command = "python -m benchmarks.keys" + (" --smoke" if args.smoke else "")
    command += " --baseline" if args.baseline else ""
    print(write_table(args.out / "keys.md", "Many tenants", command, rows))


def cost_rows(sizes: CostSizes) -> Sequence[tuple[str, str, str]]:
    rows = []
    for keys, per_key in sizes.shapes:
        keyed = take_cost(keys, per_key, sizes.calls, keyed=True)
        plain = take_cost(keys, per_key, sizes.calls, keyed=False)
        noun = "key" if keys == 1 else "keys"
        rows.append(
            (f"take cost, {keys:,} {noun} with {per_key:,} tasks each waiting: ms per task, Redis "
             "µs per task, commands per task (without a key_field: the same tasks in one index)",
             "O(log n) in the keys",
             f"{keyed.ms_per_task:.3f}, {keyed.redis_us_per_task:.0f}, "
             f"{keyed.commands_per_task:.1f} ({plain.ms_per_task:.3f}, "
             f"{plain.redis_us_per_task:.0f}, {plain.commands_per_task:.1f})")
        )  # fmt: skip
        # Small indexes are packed (listpack) where one large one is not: a key can cost less
        # than nothing. Beside one key the difference is the scripts' noise: not shown.
        difference = f"{(keyed.memory - plain.memory) / keys:+,.0f}" if keys >= 100 else "-"
        rows.append(
            (f"Redis memory, {keys:,} {noun} with {per_key:,} tasks each waiting: bytes per "
             "waiting task with a key_field (without); the difference per key", "bounded",
             f"{keyed.memory / keyed.waiting:,.0f} ({plain.memory / plain.waiting:,.0f}); "
             f"{difference}")
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
