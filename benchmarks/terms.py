"""The limit terms against the API's own view (nginx's log, or the mock API's):

    python -m benchmarks.terms [--smoke] [--out DIR]

- two terms (`100/1s, 1000/15s`), a backlog, 4 workers: the most calls in any 1 s and any 15 s,
  and the total time against the ideal the two terms allow;
- a paced term (`200/1s burst 10`) behind nginx `limit_req rate=200r/s burst=10 nodelay`, and
  beside it the same run with a plain `200/1s` term: the calls nginx rejected (429);
- MAX_IN_FLIGHT=8 across 4 workers x 16 on a 100 ms API: the most calls the API had at once;
- the throughput of three terms far above the load against one term (today's W1), and the Redis
  commands per task.

Writes `terms.md` (a table) to --out (default: benchmarks/).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ratedispatch.devtools.audit import Call, busiest, fullest_bucket
from ratedispatch.terms import Limits

from .scenarios import Sizes, throughput
from .stack import Stack

HERE = Path(__file__).parent


@dataclass(frozen=True)
class TermSizes:
    two_terms: str = "100/1s, 1000/15s"
    two_terms_tasks: int = 3000
    paced: str = "200/1s burst 10"
    paced_tasks: int = 5000
    in_flight_tasks: int = 800
    throughput_tasks: int = 20_000


SMOKE = TermSizes(
    two_terms="20/500ms, 50/2s",
    two_terms_tasks=120,
    paced="100/1s burst 5",
    paced_tasks=200,
    in_flight_tasks=80,
    throughput_tasks=400,
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


def _span(calls: list[Call]) -> float:
    return calls[-1].at - calls[0].at


def backlog(limits: str, tasks: int, *, workers: int = 4, **stack: object) -> list[Call]:
    """A backlog of `tasks` under `limits`, every call as the API saw it."""
    # Retries after a 429 (the plain term behind limit_req) wait seconds, not minutes.
    env = {
        "RATEDISPATCH_LIMITS": limits, "RATEDISPATCH_CONCURRENCY": "16",
        "RATEDISPATCH_RETRY_BACKOFF_SECONDS": "0.2", "RATEDISPATCH_RETRY_BACKOFF_MAX_SECONDS": "2",
    }  # fmt: skip
    with Stack(env, **stack) as s:  # type: ignore[arg-type]
        s.start_workers(workers)
        s.add_tasks(tasks)
        s.wait_results(tasks, timeout=120 + 5 * ideal_span(tasks, Limits.parse(limits)))
        return s.stop_api()


def two_terms(sizes: TermSizes) -> dict[str, float]:
    limits = Limits.parse(sizes.two_terms)
    calls = backlog(sizes.two_terms, sizes.two_terms_tasks)
    figures: dict[str, float] = {"calls": len(calls)}
    for term in limits.terms:
        figures[f"busiest {term}"] = busiest([c.at for c in calls], term.duration_ms / 1000)
    figures["time_per_ideal"] = _span(calls) / ideal_span(sizes.two_terms_tasks, limits)
    return figures


def paced(sizes: TermSizes, limits: str) -> dict[str, float]:
    """Behind nginx limit_req at the paced term's rate and burst; the ideal is the one the
    paced term allows (what the API accepts), whichever `limits` the workers have."""
    api_limit = Limits.parse(sizes.paced)
    term = api_limit.terms[0]
    assert term.burst is not None
    calls = backlog(limits, sizes.paced_tasks, limit_req=(term.count, term.burst))
    ok = [c for c in calls if c.status == 200]
    return {
        "calls": len(calls),
        "rejected": sum(1 for c in calls if c.status == 429),
        "fullest_bucket": fullest_bucket([c.at for c in ok], term.count),
        "time_per_ideal": _span(ok) / ideal_span(sizes.paced_tasks, api_limit),
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
        "time_per_ideal": (_span(calls) + latency) / (n * latency / cap),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.terms")
    parser.add_argument("--smoke", action="store_true", help="a few seconds each")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else TermSizes()
    rows: list[tuple[str, str, str]] = []

    two = two_terms(sizes)
    for term in Limits.parse(sizes.two_terms).terms:
        rows.append((f"two terms: most calls in any {term.duration_ms / 1000:g}s",
                     f"≤ {term.count}", f"{two[f'busiest {term}']:.0f}"))  # fmt: skip
    rows.append(("two terms: total time ÷ ideal", "≤ 1.03", f"{two['time_per_ideal']:.4f}"))

    plain_limits = sizes.paced.split(" burst ")[0]
    for name, limits in (("paced", sizes.paced), ("plain", plain_limits)):
        figures = paced(sizes, limits)
        rows.append((f"{name} `{limits}` behind limit_req: calls rejected (429)",
                     "0" if name == "paced" else "-", f"{figures['rejected']:.0f}"))  # fmt: skip
        target = "≤ 1.05" if name == "paced" else "-"
        ratio = f"{figures['time_per_ideal']:.4f}"
        rows.append((f"{name} `{limits}`: total time ÷ ideal", target, ratio))

    flight = in_flight(sizes)
    rows.append(("MAX_IN_FLIGHT=8: most calls at the API at once", "8",
                 f"{flight['most_at_once']:.0f}"))  # fmt: skip
    rows.append(("MAX_IN_FLIGHT=8: total time ÷ ideal", "-", f"{flight['time_per_ideal']:.3f}"))

    tsizes = Sizes(throughput_tasks=sizes.throughput_tasks)
    one = throughput(tsizes, "aiohttp")
    three = throughput(tsizes, "aiohttp", limits="1000000/1s, 10000000/1m, 100000000/1d")
    rows.append(("three terms ÷ one term, throughput", "≥ 0.9",
                 f"{three['tasks_per_s'] / one['tasks_per_s']:.3f}"))  # fmt: skip
    rows.append(("three terms: Redis commands per task", "≤ 4",
                 f"{three['commands_per_task']:.2f}"))  # fmt: skip
    rows.append(("one term: Redis commands per task", "-", f"{one['commands_per_task']:.2f}"))
    rows.append(("one term: tasks per second", "-", f"{one['tasks_per_s']:,.0f}"))
    rows.append(("three terms: tasks per second", "-", f"{three['tasks_per_s']:,.0f}"))

    table = ["| figure | target | measured |", "| --- | --- | --- |"]
    table += [f"| {name} | {target} | {measured} |" for name, target, measured in rows]
    text = "# Limit terms\n\n`python -m benchmarks.terms" + (" --smoke" if args.smoke else "")
    text += "`\n\n" + "\n".join(table) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "terms.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
