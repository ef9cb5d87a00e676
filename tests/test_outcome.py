"""Classifying a call: done, retry later (how long), or dead; the backoff schedule."""

from __future__ import annotations

import random

import httpx
import pytest

from ratedispatch.worker.outcome import (
    MAX_RETRY_AFTER_SECONDS,
    Verdict,
    backoff,
    classify_exception,
    classify_response,
    parse_retry_after,
    retry_delay,
)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.OK),
        (204, Verdict.OK),
        (408, Verdict.RETRY),
        (425, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (400, Verdict.DEAD),
        (401, Verdict.DEAD),
        (404, Verdict.DEAD),
        (422, Verdict.DEAD),
    ],
)
def test_status_classes_follow_the_contract(status: int, verdict: Verdict) -> None:
    outcome = classify_response(httpx.Response(status))
    assert outcome.verdict is verdict
    assert outcome.http_status == status
    assert outcome.last_status == str(status)


def test_transport_errors_are_retried_and_named() -> None:
    outcome = classify_exception(httpx.ConnectTimeout("timed out"))
    assert outcome.verdict is Verdict.RETRY
    assert outcome.last_status == "ConnectTimeout"
    assert outcome.http_status is None


def test_retry_after_in_seconds_and_as_a_date_against_the_servers_clock() -> None:
    assert parse_retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    dated = httpx.Response(
        503,
        headers={
            "Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT",
            "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
        },
    )
    assert parse_retry_after(dated) == 30.0
    assert parse_retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Response(429)) is None
    huge = httpx.Response(429, headers={"Retry-After": "999999999"})
    assert parse_retry_after(huge) == MAX_RETRY_AFTER_SECONDS


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(1)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)):
        delays = [backoff(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # it spreads over the whole range
        assert min(delays) < ceiling * 0.2


def test_retry_after_wins_when_longer_than_the_backoff() -> None:
    outcome = classify_response(httpx.Response(429, headers={"Retry-After": "3"}))
    assert retry_delay(outcome, 1, 0.1, 1.0, random.Random(2)) == 3.0
    quick = classify_response(httpx.Response(503))
    assert retry_delay(quick, 1, 0.1, 1.0, random.Random(2)) <= 0.1
