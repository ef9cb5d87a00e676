"""Many APIs in one fleet, against the API's own view (nginx's log):

    python -m benchmarks.apis [--smoke] [--out DIR] [--repeats N]

- two APIs: `slow` at 5/1s with a backlog of high-priority tasks waiting, and `fast` (the
  default API) at 500/1s with a backlog of its own; `fast`'s throughput beside the slow backlog,
  against its throughput alone (the issue asks for at least 0.9).

Writes `apis.md` (a table) to --out (default: benchmarks/).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import cast

from .report import spread, write_table
from .stack import RESULTS, STREAM, Stack

HERE = Path(__file__).parent


@dataclass(frozen=True)
class ApiSizes:
    slow_limits: str = "5/1s"
    slow_tasks: int = 2000
    fast_limits: str = "500/1s"
    fast_tasks: int = 3000


SMOKE = ApiSizes(slow_tasks=50, fast_tasks=200)


def fast_rate(sizes: ApiSizes, *, with_slow: bool, workers: int = 2) -> float:
    """Calls per second the fast API saw (nginx's log), from its first call to its last."""
    config = Path(f"/tmp/ratedispatch-apis-{time.monotonic_ns()}.toml")
    env = {
        "RATEDISPATCH_LIMITS": sizes.fast_limits, "RATEDISPATCH_CONCURRENCY": "16",
        "RATEDISPATCH_CONFIG": str(config),
    }  # fmt: skip
    try:
        with Stack(env) as stack:
            config.write_text(
                f'[apis.slow]\nbase_url = "http://127.0.0.1:{stack.api_port}"\n'
                f'limits = "{sizes.slow_limits}"\n'
            )
            stack.start_workers(workers)
            pipe = stack.redis.pipeline(transaction=False)
            if with_slow:  # first, and ranked first: it must still not hold the fast API back
                for _ in range(sizes.slow_tasks):
                    pipe.xadd(STREAM, {"endpoint": "/t", "api": "slow", "priority": "high",
                                       "prio": "slow"})  # fmt: skip
            for _ in range(sizes.fast_tasks):
                pipe.xadd(STREAM, {"endpoint": "/t", "priority": "low", "prio": "fast"})
            ids = [i.decode() for i in pipe.execute()]
            fast = set(ids[-sizes.fast_tasks :])
            done, after = 0, "-"
            deadline = time.monotonic() + 60 + 5 * sizes.fast_tasks / 500
            while done < len(fast):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{done} of {len(fast)} fast tasks done in time")
                rows = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    stack.redis.xrange(RESULTS, min=after, count=5000),
                )
                if after != "-":
                    rows = rows[1:]  # the range starts at the last one read
                for entry_id, fields in rows:
                    done += fields[b"id"].decode() in fast
                    after = entry_id.decode()
                time.sleep(0.05)
            calls = [c for c in stack.stop_api() if c.priority == "fast"]
    finally:
        config.unlink(missing_ok=True)
    assert len(calls) == sizes.fast_tasks, (len(calls), sizes.fast_tasks)
    return (len(calls) - 1) / (calls[-1].at - calls[0].at)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.apis")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind, alternating")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else ApiSizes()
    alone, beside = [], []
    for _ in range(args.repeats):
        alone.append(fast_rate(sizes, with_slow=False))
        beside.append(fast_rate(sizes, with_slow=True))
    ratios = [b / a for a, b in zip(alone, beside, strict=True)]
    rows = [
        (f"`fast` ({sizes.fast_limits}, {sizes.fast_tasks:,} tasks) alone: calls per second "
         "(median)", "-", f"{median(alone):.1f}"),
        (f"`fast` beside `slow` ({sizes.slow_limits}, {sizes.slow_tasks:,} high-priority tasks "
         "waiting): calls per second (median)", "-", f"{median(beside):.1f}"),
        (f"beside ÷ alone (median of {args.repeats} pairs; lowest, highest)", "≥ 0.9",
         spread(ratios, ".3f")),
    ]  # fmt: skip
    command = "python -m benchmarks.apis" + (" --smoke" if args.smoke else "")
    command += f" --repeats {args.repeats}"
    print(write_table(args.out / "apis.md", "Many APIs", command, rows))


if __name__ == "__main__":
    main()
