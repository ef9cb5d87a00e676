"""The observer's reconstruction of fixed windows from a log of calls."""

from __future__ import annotations

from ratedispatch.audit import Call, first_window_of, fixed_windows


def calls(*times: float) -> list[Call]:
    return [Call(t, f"task-{i}") for i, t in enumerate(times)]


def test_a_window_opens_with_the_first_call_after_the_previous_one_ended() -> None:
    log = calls(0.0, 0.1, 0.9, 1.0, 1.5, 2.2)
    assert [len(w) for w in fixed_windows(log, 1.0)] == [3, 2, 1]


def test_tolerance_lets_a_slightly_early_burst_open_the_next_window() -> None:
    log = calls(0.02, 0.03, 0.995, 0.996)  # first call seen 20 ms late, next burst on time
    assert [len(w) for w in fixed_windows(log, 1.0)] == [4]
    assert [len(w) for w in fixed_windows(log, 1.0, tolerance=0.05)] == [2, 2]


def test_cold_start_applies_to_the_first_window_only() -> None:
    log = calls(0.2, 0.25, 1.0, 1.01, 2.0, 2.96)  # the first call was seen 200 ms late
    assert [len(w) for w in fixed_windows(log, 1.0)] == [4, 2]
    assert [len(w) for w in fixed_windows(log, 1.0, cold_start=0.2)] == [2, 2, 2]
    assert first_window_of(fixed_windows(log, 1.0, cold_start=0.2))["task-5"] == 2
