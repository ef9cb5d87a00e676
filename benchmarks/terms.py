"""The limit terms against the API's own view (nginx's log, or the mock API's):

    python -m benchmarks.terms [--smoke] [--out DIR] [--repeats N] [--baseline DIR]

- two terms (`100/1s, 1000/15s`), a backlog, 4 workers: the most calls in any 1 s and any 15 s,
  and the total time against the ideal the two terms allow;
- a paced term (`200/1s burst 10`) behind nginx `limit_req rate=200r/s burst=10 nodelay`, and
  beside it the same run with a plain `200/1s` term: the calls nginx rejected (429);
- MAX_IN_FLIGHT=8 across 4 workers x 16 on a 100 ms API: the most calls the API had at once;
- the throughput of three terms far above the load against one term (the throughput scenario of
  `python -m benchmarks`), on the code before the terms with `--baseline DIR` (a checkout, e.g.
  `git worktree add DIR 6db28f7`), in alternating runs; and the Redis commands per task.

Writes `terms.md` (a table) to --out (default: benchmarks/).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from ratedispatch.devtools.audit import Call, busiest, fullest_bucket
from ratedispatch.terms import Limits

from .report import spread, write_table
from .scenarios import Sizes, span, throughput
from .stack import RESULTS, Stack

HERE = Path(__file__).parent


@dataclass(frozen=True)
class TermSizes:
    two_terms: str = "100/1s, 1000/15s"
    two_terms_tasks: int = 3000
    paced: str = "200/1s burst 10"
    paced_tasks: int = 5000
    in_flight_tasks: int = 800
    throughput_tasks: int = 20_000
    # How long the plain term runs behind limit_req (it does not finish a backlog in good time).
    plain_seconds: float = 20.0


SMOKE = TermSizes(
    two_terms="20/500ms, 50/2s",
    two_terms_tasks=120,
    paced="100/1s burst 5",
    paced_tasks=200,
    in_flight_tasks=80,
    throughput_tasks=400,
    plain_seconds=3.0,
)


def ideal_span(n: int, limits: Limits) -> float:
    """Seconds from the first call to the n-th, were each started at the earliest moment every
    term allows (a window term: N calls in any D; a paced term: B at once, then one per D/N)."""
    times: list[float] = []
    for k in range(n):
        at = times[-1] if times else 0.0
        for term in limits.terms:
            seconds = term.duration_ms / 1000
            if term.burst is None and k >= term.count:
                at = max(at, times[k - term.count] + seconds)
            elif term.burst is not None and k >= term.burst:
                at = max(at, (k - term.burst + 1) * seconds / term.count)
        times.append(at)
    return times[-1] - times[0]


def backlog(
    limits: str, tasks: int, *, workers: int = 4, cap: float | None = None, **stack: object
) -> list[Call]:
    """A backlog of `tasks` under `limits`, every call as the API saw it; with `cap`, only as
    many as finish within `cap` seconds."""
    # Retries after a 429 (the plain term behind limit_req) wait seconds, not minutes.
    env = {
        "RATEDISPATCH_LIMITS": limits, "RATEDISPATCH_CONCURRENCY": "16",
        "RATEDISPATCH_RETRY_BACKOFF_SECONDS": "0.2", "RATEDISPATCH_RETRY_BACKOFF_MAX_SECONDS": "2",
    }  # fmt: skip
    with Stack(env, **stack) as s:  # type: ignore[arg-type]
        s.start_workers(workers)
        s.add_tasks(tasks)
        if cap is None:
            s.wait_results(tasks, timeout=120 + 5 * ideal_span(tasks, Limits.parse(limits)))
        else:
            until = time.monotonic() + cap
            while time.monotonic() < until and s.redis.xlen(RESULTS) < tasks:
                time.sleep(0.1)
        return s.stop_api()


def two_terms(sizes: TermSizes) -> dict[str, float]:
    limits = Limits.parse(sizes.two_terms)
    calls = backlog(sizes.two_terms, sizes.two_terms_tasks)
    figures: dict[str, float] = {"calls": len(calls)}
    for term in limits.terms:
        figures[f"busiest {term}"] = busiest([c.at for c in calls], term.duration_ms / 1000)
    figures["time_per_ideal"] = span(calls) / ideal_span(sizes.two_terms_tasks, limits)
    return figures


def paced(sizes: TermSizes, limits: str, cap: float | None = None) -> dict[str, float]:
    """Behind nginx limit_req at the paced term's rate and burst; the ideal is the one the
    paced term allows (what the API accepts), whichever `limits` the workers have."""
    api_limit = Limits.parse(sizes.paced)
    term = api_limit.terms[0]
    assert term.burst is not None
    calls = backlog(limits, sizes.paced_tasks, limit_req=(term.count, term.burst), cap=cap)
    ok = [c for c in calls if c.status == 200]
    return {
        "calls": len(calls),
        "ok": len(ok),
        "rejected": sum(1 for c in calls if c.status == 429),
        "ok_per_s": len(ok) / span(calls),
        "fullest_bucket": fullest_bucket([c.at for c in ok], term.count),
        "time_per_ideal": span(ok) / ideal_span(len(ok), api_limit),
    }


def in_flight(sizes: TermSizes, cap: int = 8, latency: float = 0.1) -> dict[str, float]:
    """MAX_IN_FLIGHT on an API that holds every call `latency` s: the most it had at once."""
    env = {
        "RATEDISPATCH_RATE_LIMIT": "1000000", "RATEDISPATCH_RATE_WINDOW_SECONDS": "1",
        "RATEDISPATCH_MAX_IN_FLIGHT": str(cap), "RATEDISPATCH_CONCURRENCY": "16",
    }  # fmt: skip
    n = sizes.in_flight_tasks
    with Stack(env, api="mock", latency=latency) as s:
        s.start_workers(4)
        s.add_tasks(n)
        s.wait_results(n, timeout=60 + 3 * n * latency / cap)
        calls = s.stop_api()
    # Each call is held exactly `latency` by the mock: those arriving within it overlap.
    return {
        "calls": len(calls),
        "most_at_once": busiest([c.at for c in calls], latency),
        "time_per_ideal": (span(calls) + latency) / (n * latency / cap),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.terms")
    parser.add_argument("--smoke", action="store_true", help="a few seconds each")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs of each kind")
    parser.add_argument(
        "--baseline", help="a checkout of the code before the terms, for the one-term runs"
    )
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else TermSizes()
    rows: list[tuple[str, str, str]] = []
    done = 0

    def progress() -> None:
        nonlocal done
        for row in rows[done:]:
            print(" | ".join(row), flush=True)
        done = len(rows)

    two = two_terms(sizes)
    for term in Limits.parse(sizes.two_terms).terms:
        rows.append((f"two terms: most calls in any {term.duration_ms / 1000:g}s",
                     f"≤ {term.count}", f"{two[f'busiest {term}']:.0f}"))  # fmt: skip
    rows.append(("two terms: total time ÷ ideal", "≤ 1.03", f"{two['time_per_ideal']:.4f}"))

    progress()
    figures = paced(sizes, sizes.paced)
    rows.append((f"paced `{sizes.paced}` behind limit_req: calls rejected (429)", "0",
                 f"{figures['rejected']:.0f} of {figures['calls']:.0f}"))  # fmt: skip
    rows.append((f"paced `{sizes.paced}`: total time ÷ ideal", "≤ 1.05",
                 f"{figures['time_per_ideal']:.4f}"))  # fmt: skip
    rows.append((f"paced `{sizes.paced}`: calls accepted per second", "-",
                 f"{figures['ok_per_s']:.0f}"))  # fmt: skip
    # The same API with a plain term: each window's calls arrive at once, the API refuses all
    # but its burst, and the 429s close the window; it never ends, so it runs for a while.
    plain = sizes.paced.split(" burst ")[0]
    figures = paced(sizes, plain, cap=sizes.plain_seconds)
    rows.append((f"plain `{plain}` behind limit_req: calls rejected (429), first "
                 f"{sizes.plain_seconds:g}s", "-",
                 f"{figures['rejected']:.0f} of {figures['calls']:.0f}"))  # fmt: skip
    rows.append((f"plain `{plain}`: calls accepted per second", "-",
                 f"{figures['ok_per_s']:.0f}"))  # fmt: skip

    progress()
    flight = in_flight(sizes)
    rows.append(("MAX_IN_FLIGHT=8: most calls at the API at once", "8",
                 f"{flight['most_at_once']:.0f}"))  # fmt: skip
    rows.append(("MAX_IN_FLIGHT=8: total time ÷ ideal", "-", f"{flight['time_per_ideal']:.3f}"))

    progress()
    # Three terms far above the load against one term, in alternating runs: with --baseline,
    # the one term runs on that checkout (the code before the terms), else on this one.
    tsizes = Sizes(throughput_tasks=sizes.throughput_tasks)
    three_terms = "1000000/1s, 10000000/1m, 100000000/1d"
    ones, threes = [], []
    for _ in range(args.repeats):
        ones.append(throughput(tsizes, "aiohttp", code=args.baseline))
        threes.append(throughput(tsizes, "aiohttp", limits=three_terms))
    # The machine's speed drifts between runs (the same code varied by 1.5x in 15 minutes here),
    # so each three-term run is compared with the one-term run just before it.
    ratios = [b["tasks_per_s"] / a["tasks_per_s"] for a, b in zip(ones, threes, strict=True)]
    against = "the code before the terms" if args.baseline else "one term"
    rows.append((f"three terms ÷ {against}, throughput (median of {args.repeats} pairs; "
                 "lowest, highest)", "≥ 0.9", spread(ratios, ".3f")))  # fmt: skip
    for name, runs in (("three terms", threes), (against, ones)):
        rows.append((f"{name}: Redis commands per task (median; lowest, highest)",
                     "≤ 4" if runs is threes else "-",
                     spread([run["commands_per_task"] for run in runs], ".2f")))  # fmt: skip
    for name, runs in ((against, ones), ("three terms", threes)):
        rows.append((f"{name}: tasks per second (median)", "-",
                     f"{median(run['tasks_per_s'] for run in runs):,.0f}"))  # fmt: skip
        rows.append((f"{name}: worker CPU per task (ms, median)", "-",
                     f"{median(run['cpu_ms_per_task'] for run in runs):.3f}"))  # fmt: skip
    progress()
    command = "python -m benchmarks.terms" + (" --smoke" if args.smoke else "")
    if args.repeats != 1:
        command += f" --repeats {args.repeats}"
    if args.baseline:
        command += " --baseline <the code before the terms>"
    print(write_table(args.out / "terms.md", "Limit terms", command, rows))


if __name__ == "__main__":
    main()
