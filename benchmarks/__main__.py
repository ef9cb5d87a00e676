"""The benchmark suite: `python -m benchmarks [--repeats 3] [--smoke] [--out DIR]`.

Writes DIR/results.md (default: benchmarks/) and DIR/quota.png, and prints the table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median

from . import scenarios
from .report import Figure, at_least, at_most, figure, plot_quota, write_results
from .scenarios import SMOKE, Sizes
from .stack import machine

Run = Callable[[], dict[str, float]]


def repeat(what: str, run: Run, times: int) -> dict[str, float]:
    """The median of each figure over `times` runs."""
    runs = []
    for i in range(times):
        print(f"  {what} {i + 1}/{times} ...", flush=True)
        runs.append(run())
    return {key: median([r[key] for r in runs]) for key in runs[0]}


def api_used() -> str:
    if shutil.which("nginx"):
        return (
            "The API is nginx (`return 200`), its access log (`$msec`) the observer of every "
            "call; the latency scenario uses `python -m ratedispatch.devtools.mockapi` instead, "
            "which records arrivals to the microsecond (nginx logs whole milliseconds)."
        )
    return (
        "The API is `python -m ratedispatch.devtools.mockapi` in its own process (one asyncio "
        "loop, calls recorded in memory); nginx is not installed on this machine."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: seconds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    times = 1 if args.smoke else args.repeats
    args.out.mkdir(parents=True, exist_ok=True)

    transports: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for transport in ("aiohttp", "httpx"):

        def bare(t: str = transport) -> dict[str, float]:
            return scenarios.bare(sizes, t)

        def workers(t: str = transport) -> dict[str, float]:
            return scenarios.throughput(sizes, t)

        transports[transport] = (
            repeat(f"bare loop, {transport}", bare, times),
            repeat(f"throughput, {transport}", workers, times),
        )
    best = max(transports, key=lambda t: transports[t][1]["tasks_per_s"])
    base, thr = transports[best]
    quota_runs = []

    def quota_once() -> dict[str, float]:
        figures, calls = scenarios.quota(sizes)
        quota_runs.append((figures["time_per_ideal"], calls))
        return figures

    quota = repeat("quota", quota_once, times)
    prio = repeat("priority", lambda: scenarios.priority(sizes), times)
    lat = repeat("latency", lambda: scenarios.latency(sizes), times)
    mem = repeat("memory", lambda: scenarios.memory(sizes), times)
    # The picture is of the run whose time ratio is the median one.
    quota_runs.sort(key=lambda r: r[0])
    plot_quota(args.out / "quota.png", quota_runs[len(quota_runs) // 2][1], sizes.quota_limit,
               sizes.window)  # fmt: skip

    n = sizes.throughput_tasks
    figures: list[Figure] = [
        figure(f"throughput ÷ bare client loop ({best})", "≥ 0.6",
               thr["tasks_per_s"] / base["tasks_per_s"], ".2f", at_least(0.6)),
        figure(f"throughput, {n:,} tasks, 2 workers x 8 ({best})", "≥ 5,000 tasks/s",
               thr["tasks_per_s"], ",.0f", at_least(5000)),
        figure(f"max calls in any {sizes.window:g} s ÷ limit ({sizes.quota_tasks:,} tasks, "
               f"limit {sizes.quota_limit}, 4 workers)", "≤ 1.05",
               quota["max_in_window_per_limit"], ".3f", at_most(1.05)),
        figure("total time ÷ ideal (quota)", "≤ 1.02", quota["time_per_ideal"], ".4f",
               at_most(1.02)),
        figure(f"high task behind {sizes.priority_backlog:,} normal: windows waited",
               "≤ 1 (the next window)", prio["windows_waited"], ".0f", at_most(1)),
        figure("idle latency XADD → call, p50 (ms)", "≤ 2", lat["p50_ms"], ".2f", at_most(2)),
        figure("idle latency XADD → call, p99 (ms)", "≤ 10", lat["p99_ms"], ".2f", at_most(10)),
        figure(f"worker peak RSS, {sizes.memory_backlog:,}-task backlog (MB)", "≤ 80",
               mem["peak_rss_mb"], ".1f", at_most(80)),
        figure("Redis commands per task (throughput)", "≤ 4", thr["commands_per_task"], ".2f",
               at_most(4)),
        figure("worker CPU per task (ms, throughput)", "—", thr["cpu_ms_per_task"], ".3f", None),
    ]  # fmt: skip
    notes = ["Transports (the faster is the `HTTP_TRANSPORT` default):", ""]
    for transport, (b, t) in transports.items():
        notes.append(
            f"- `{transport}`: bare loop {b['tasks_per_s']:,.0f}/s, workers "
            f"{t['tasks_per_s']:,.0f}/s (ratio {t['tasks_per_s'] / b['tasks_per_s']:.2f}), "
            f"{t['commands_per_task']:.2f} Redis commands and {t['cpu_ms_per_task']:.3f} ms "
            "of worker CPU per task"
        )
    notes += [
        "",
        f"Quota, window by window: a window's {sizes.quota_limit} calls reached the API over "
        f"{quota['spread_ms']:.1f} ms (median; the first window, whose calls open the workers' "
        f"connections, over {quota['first_spread_ms']:.1f} ms), and a window's n-th call came "
        f"{quota['reuse_ms']:.1f} ms more than a window after the last window's n-th (median): "
        "each slot is used again a window after its call's answer.",
        f"Priority: the high task was called {prio['seconds_waited']:.3f} s after its XADD "
        f"(window {sizes.window:g} s).",
        api_used(),
    ]
    command = "python -m benchmarks" + (" --smoke" if args.smoke else f" --repeats {times}")
    write_results(args.out / "results.md", figures, notes, machine(), command)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
