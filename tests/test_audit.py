"""The observer's reconstruction of fixed windows from a log of calls."""

from __future__ import annotations

from ratedispatch.devtools.audit import Call, check, first_window_of, fixed_windows


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


def test_the_checker_reports_limit_duplicates_losses_and_inversions() -> None:
    tasks = {"h1": "high", "h2": "high", "n1": "normal", "l1": "low", "l2": "low"}
    log = [
        Call(0.00, "h1"), Call(0.01, "n1"), Call(0.02, "l1"),  # window 1: l1 jumped ahead of h2
        Call(1.00, "h2"), Call(1.01, "h1"),  # window 2: h2, and h1 again
    ]  # fmt: skip
    report = check(log, tasks, {"h1", "h2", "n1", "l1"}, window=1.0, limit=2)
    assert report.windows == [3, 2] and report.busiest == 3
    assert report.never_called == ["l2"]
    assert report.called_more_than_once == {"h1": 2}
    assert report.lost == ["l2"]
    assert report.priority_inversions == 1  # h2 came after a normal and a low task
    assert "busiest window 3/2" in report.summary()


def test_a_clean_run_reports_nothing_wrong() -> None:
    tasks = {"h": "high", "n": "normal", "l": "low"}
    log = [Call(0.0, "h"), Call(0.5, "n"), Call(1.2, "l")]
    report = check(log, tasks, set(tasks), window=1.0, limit=2)
    assert (report.busiest, report.lost, report.called_more_than_once) == (2, [], {})
    assert (report.never_called, report.priority_inversions) == ([], 0)


def test_inversions_count_only_tasks_that_were_waiting() -> None:
    tasks = {"l1": "low", "h1": "high", "h2": "high"}
    log = [Call(0.0, "l1"), Call(1.0, "h1"), Call(2.0, "h2")]
    # h2 was there before window 1 opened and waited while l1 was called: an inversion.
    # h1 was added just before window 2: nothing lower was called while it waited.
    added = {"l1": -1.0, "h1": 0.95, "h2": -0.5}
    report = check(log, tasks, set(tasks), window=1.0, limit=5, enqueued=added)
    assert report.priority_inversions == 1
    everything_at_start = check(log, tasks, set(tasks), window=1.0, limit=5)
    assert everything_at_start.priority_inversions == 2  # h1 and h2 both waited behind l1


def test_a_call_after_a_2xx_is_told_apart_from_a_retry() -> None:
    tasks = {"a": "normal", "b": "normal"}
    log = [
        Call(0.0, "a", status=503), Call(0.5, "a", status=200),  # a retry: fine
        Call(0.1, "b", status=200), Call(1.2, "b", status=200),  # b again after success
    ]  # fmt: skip
    report = check(log, tasks, set(tasks), window=1.0, limit=5)
    assert report.called_more_than_once == {"a": 2, "b": 2}
    assert report.called_after_success == ["b"]
