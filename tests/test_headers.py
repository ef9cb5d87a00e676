"""Reading what an API's response headers say about its limits (ratedispatch/headers.py): the
headers real APIs send, and properties over any text a server might put in them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratedispatch.headers import (
    MAX_CALLS,
    MAX_RESET_SECONDS,
    Announcement,
    Quota,
    read_announcement,
)

NOW = 1_800_000_000.0  # the wall clock, epoch seconds


def read(**headers: str) -> Announcement:
    return read_announcement({k.replace("_", "-"): v for k, v in headers.items()}, NOW)


def test_githubs_headers_with_an_epoch_reset() -> None:
    said = read(
        X_RateLimit_Limit="5000",
        X_RateLimit_Remaining="4990",
        X_RateLimit_Reset=str(int(NOW) + 1200),
    )
    assert (said.remaining, said.reset, said.quotas) == (4990, 1200.0, (Quota(5000),))
    assert not said.ignored


def test_reset_after_in_seconds_wins_and_an_epoch_in_ms_is_read() -> None:
    said = read(X_RateLimit_Remaining="3", X_RateLimit_Reset="99", X_RateLimit_Reset_After="1.5")
    assert (said.remaining, said.reset) == (3, 1.5)
    said = read(X_RateLimit_Remaining="3", X_RateLimit_Reset=str(int(NOW * 1000) + 2500))
    assert said.reset == pytest.approx(2.5)


def test_the_drafts_structured_fields_with_several_policies() -> None:
    said = read(
        RateLimit_Policy='"hour";q=1000;w=3600, "day";q=5000;w=86400',
        RateLimit='"hour";r=12;t=340, "day";r=4000;t=1.5',
    )
    assert (said.remaining, said.reset) == (12, 340.0)  # the tightest policy
    assert said.quotas == (Quota(1000, 3600.0, "hour"), Quota(5000, 86400.0, "day"))


def test_the_drafts_earlier_revisions() -> None:
    said = read(RateLimit="limit=100, remaining=50, reset=5")
    assert (said.remaining, said.reset) == (50, 5.0)
    said = read(RateLimit_Limit="100", RateLimit_Remaining="7", RateLimit_Reset="30")
    assert (said.remaining, said.reset, said.quotas) == (7, 30.0, (Quota(100),))


def test_an_epoch_just_past_is_now_and_remaining_without_a_reset_says_nothing() -> None:
    said = read(X_RateLimit_Remaining="0", X_RateLimit_Reset=str(int(NOW) - 2))
    assert (said.remaining, said.reset) == (0, 0.0)
    said = read(X_RateLimit_Remaining="5")
    assert said.remaining is None and said.empty


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"X-RateLimit-Remaining": "-1", "X-RateLimit-Reset": "5"}, "X-RateLimit-Remaining"),
        ({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "nan"}, "X-RateLimit-Reset"),
        ({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": str(int(NOW) + 30 * 86_400)},
         "X-RateLimit-Reset"),
        ({"X-RateLimit-Limit": "lots"}, "X-RateLimit-Limit"),
        ({"RateLimit": '"h";r=5;t=-1'}, "RateLimit"),
        ({"RateLimit": "garbage;;"}, "RateLimit"),
        ({"RateLimit-Policy": '"h";q=5'}, "RateLimit-Policy"),
        ({"RateLimit": '"h";r=99999999999;t=1'}, "RateLimit"),
    ],
)  # fmt: skip
def test_a_malformed_or_absurd_header_is_ignored_and_named(
    headers: dict[str, str], named: str
) -> None:
    said = read_announcement(headers, NOW)
    assert named in said.ignored
    assert said.remaining is None


def test_no_headers_say_nothing() -> None:
    said = read_announcement({"Content-Type": "application/json"}, NOW)
    assert said == Announcement() and said.empty


HEADER_NAMES = st.sampled_from(
    ["RateLimit", "RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
     "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-After",
     "x-ratelimit-remaining", "RATELIMIT"]
)  # fmt: skip


@given(st.dictionaries(HEADER_NAMES, st.text(max_size=60), max_size=8))
def test_any_text_in_any_of_them_is_read_or_ignored_never_an_error(
    headers: dict[str, str],
) -> None:
    said = read_announcement(headers, NOW)
    if said.remaining is not None:
        assert 0 <= said.remaining <= MAX_CALLS
        assert said.reset is not None and 0 <= said.reset <= MAX_RESET_SECONDS
    for quota in said.quotas:
        assert 0 <= quota.limit <= MAX_CALLS
        assert quota.window is None or 0 < quota.window <= MAX_RESET_SECONDS
    present = {name.lower() for name in headers}
    assert all(name.lower() in present for name in said.ignored)


@given(
    limit=st.integers(0, MAX_CALLS),
    remaining=st.integers(0, MAX_CALLS),
    reset=st.integers(0, 86_400),
    style=st.sampled_from(["delta", "epoch", "epoch-ms", "after"]),
)
def test_well_formed_x_ratelimit_headers_are_read_exactly(
    limit: int, remaining: int, reset: int, style: str
) -> None:
    headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining)}
    if style == "delta":
        headers["X-RateLimit-Reset"] = str(reset)
    elif style == "epoch":
        headers["X-RateLimit-Reset"] = str(int(NOW) + reset)
    elif style == "epoch-ms":
        headers["X-RateLimit-Reset"] = str(int(NOW * 1000) + reset * 1000)
    else:
        headers["X-RateLimit-Reset-After"] = str(reset)
    said = read_announcement(headers, NOW)
    assert said.remaining == remaining and said.quotas == (Quota(limit),)
    assert said.reset == pytest.approx(reset, abs=1e-3) and not said.ignored


POLICY = st.tuples(  # remaining, reset, quota, window
    st.integers(0, 10**6), st.integers(0, 10**5), st.integers(0, 10**6), st.integers(0, 10**5)
)


@given(st.lists(POLICY, min_size=1, max_size=4))
def test_the_tightest_of_the_drafts_policies_is_the_one_read(
    policies: list[tuple[int, int, int, int]],
) -> None:
    current = ", ".join(f'"p{i}";r={r};t={t}' for i, (r, t, _, _) in enumerate(policies))
    policy = ", ".join(f'"p{i}";q={q};w={w}' for i, (_, _, q, w) in enumerate(policies))
    said = read_announcement({"RateLimit": current, "RateLimit-Policy": policy}, NOW)
    assert said.remaining == min(r for r, _, _, _ in policies)
    # A policy with no window (w=0) states no quota the fleet could keep to.
    assert said.quotas == tuple(
        Quota(q, float(w), f"p{i}") for i, (_, _, q, w) in enumerate(policies) if w > 0
    )
