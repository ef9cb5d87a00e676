"""Reading a log of calls, as the API saw them, against the limit and the priorities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Call:
    at: float  # seconds, on the observer's clock
    task: str  # which task (entry id or idempotency key)
    priority: str = "normal"


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
