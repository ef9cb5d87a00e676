"""Reading a log of calls, as the API saw them, against the limit and the priorities."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field


def busiest(times: Sequence[float], seconds: float) -> int:
    """The most calls in any interval of `seconds` (a sliding window, not fixed ones)."""
    ordered = sorted(times)
    start, most = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def fullest_bucket(times: Sequence[float], per_second: float) -> float:
    """The highest level a leaky bucket draining `per_second` reaches with these arrivals
    (nginx `limit_req` refuses a call that would take it above its burst, plus one)."""
    level, last, most = 0.0, 0.0, 0.0
    for index, at in enumerate(sorted(times)):
        if index:
            level = max(0.0, level - (at - last) * per_second)
        level, last = level + 1, at
        most = max(most, level)
    return most


@dataclass(frozen=True, slots=True)
class Call:
    at: float  # seconds, on the observer's clock
    task: str  # which task (entry id or idempotency key)
    priority: str = "normal"
    status: int = 0  # the API's answer, when the observer recorded it


def fixed_windows(
    calls: Sequence[Call], window: float, tolerance: float = 0.0, cold_start: float = 0.0
) -> list[list[Call]]:
    """Group calls into windows the way the limiter opens them: a window starts with the first
    call after the previous one ended, and lasts `window` seconds.

    An observer sees each call a little after its slot was taken, and not always equally late:
    with a backlog, the next window's burst can arrive a few ms before `window` has passed since
    the first call this observer saw. `tolerance` (seconds) is how much earlier than `window`
    a call may arrive and still start a new window; it is the observer's jitter, not the limiter's.
    `cold_start` is the same for the very first call, which can be much later than its slot: a
    fresh worker process makes its first connection.
    """
    windows: list[list[Call]] = []
    end = float("-inf")
    for call in sorted(calls, key=lambda c: c.at):
        if call.at >= end:
            late = tolerance + (cold_start if not windows else 0.0)
            windows.append([])
            end = call.at + window - late
        windows[-1].append(call)
    return windows


def first_window_of(windows: Sequence[Sequence[Call]]) -> dict[str, int]:
    """For each task, the index of the window of its first call."""
    first: dict[str, int] = {}
    for index, window in enumerate(windows):
        for call in window:
            first.setdefault(call.task, index)
    return first


@dataclass(frozen=True, slots=True)
class Report:
    """What a run did to its tasks, from the API's log of calls and Redis's final state."""

    tasks: int
    calls: int
    windows: list[int]  # calls in each window, as the API saw them
    limit: int
    never_called: list[str]
    called_more_than_once: dict[str, int]
    lost: list[str]  # neither acknowledged with a result nor dead-lettered
    # tasks first called in a later window than a lower-priority task (see `check`)
    priority_inversions: int
    # called again after the API had answered 2xx: only a worker killed before it could record
    # that answer explains it (retries after errors are not counted here)
    called_after_success: list[str] = field(default_factory=list)

    @property
    def busiest(self) -> int:
        return max(self.windows, default=0)

    def summary(self) -> str:
        return (
            f"{self.tasks} tasks, {self.calls} calls in {len(self.windows)} windows; "
            f"busiest window {self.busiest}/{self.limit}; lost {len(self.lost)}; "
            f"never called {len(self.never_called)}; "
            f"called more than once {len(self.called_more_than_once)} "
            f"(again after a 2xx: {len(self.called_after_success)}); "
            f"priority inversions {self.priority_inversions}"
        )


RANK = {"high": 0, "normal": 1, "low": 2}


def check(
    calls: Sequence[Call],
    tasks: dict[str, str],
    finished: set[str],
    *,
    window: float,
    limit: int,
    tolerance: float = 0.0,
    cold_start: float = 0.0,
    enqueued: dict[str, float] | None = None,
    index_delay: float = 0.1,
) -> Report:
    """`tasks` maps each task (as `Call.task` names it) to its priority; `finished` holds the
    tasks with a result or a dead letter. Calls to tasks not in `tasks` count toward the limit.

    A priority inversion is a task that waited through a window in which a task of lower
    priority got its first call. `enqueued` gives, on the observer's clock, when each task was
    added; a task counts as waiting from the first window opening `index_delay` seconds later
    (the time a reader takes to index it). Without `enqueued`, every task waits from the start.
    """
    windows = fixed_windows(calls, window, tolerance, cold_start)
    first = first_window_of(windows)
    counts: dict[str, int] = {}
    succeeded: set[str] = set()
    after_success: set[str] = set()
    for call in sorted(calls, key=lambda c: c.at):
        counts[call.task] = counts.get(call.task, 0) + 1
        if call.task in succeeded:
            after_success.add(call.task)
        if 200 <= call.status < 300:
            succeeded.add(call.task)
    # lowest[i]: the lowest priority (highest rank) that got a first call in window i.
    lowest = [-1] * len(windows)
    for task, index in first.items():
        if task in tasks:
            lowest[index] = max(lowest[index], RANK[tasks[task]])
    # below[r][i]: how many of windows 0..i-1 gave a first call to something below rank r.
    below = {r: [0] for r in RANK.values()}
    for worst in lowest:
        for r, prefix in below.items():
            prefix.append(prefix[-1] + (1 if worst > r else 0))
    starts = [w[0].at for w in windows]
    inversions = 0
    for task, priority in tasks.items():
        rank = RANK[priority]
        waited_from = 0
        if enqueued is not None and task in enqueued:
            waited_from = bisect.bisect_left(starts, enqueued[task] + index_delay)
        until = first.get(task, len(windows))
        if until > waited_from and below[rank][until] - below[rank][waited_from] > 0:
            inversions += 1
    return Report(
        tasks=len(tasks),
        calls=len(calls),
        windows=[len(w) for w in windows],
        limit=limit,
        never_called=sorted(t for t in tasks if t not in counts),
        called_more_than_once={t: n for t, n in counts.items() if n > 1 and t in tasks},
        lost=sorted(t for t in tasks if t not in finished),
        priority_inversions=inversions,
        called_after_success=sorted(t for t in after_success if t in tasks),
    )
