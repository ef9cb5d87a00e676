"""RATEDISPATCH_LIMITS as an API publishes its limits: the terms read, shown and refused."""

from __future__ import annotations

import pytest

from ratedispatch.errors import ConfigError, InvalidTask
from ratedispatch.settings import load_settings
from ratedispatch.task import parse_entry
from ratedispatch.terms import Limits, Term

from .conftest import make_settings


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("100/1m", [Term(100, 60_000)]),
        ("10/1s burst 3, 600/1m, 20000/1d",
         [Term(10, 1000, 3), Term(600, 60_000), Term(20_000, 86_400_000)]),
        ("5 / 250ms", [Term(5, 250)]),
        ("3/90s,  2/1h  burst 40", [Term(3, 90_000), Term(2, 3_600_000, 40)]),
    ],
)  # fmt: skip
def test_terms_are_read_as_apis_write_them(text: str, terms: list[Term]) -> None:
    assert list(Limits.parse(text).terms) == terms


def test_terms_are_shown_in_their_largest_unit() -> None:
    limits = Limits.parse("10/1000ms burst 3, 600/60s, 20000/24h, 7/1500ms")
    assert str(limits) == "10/1s burst 3, 600/1m, 20000/1d, 7/1500ms"
    assert limits.encoded() == "p,10,1000,3;w,600,60000;w,20000,86400000;w,7,1500"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100/0s", "the duration must be more than 0"),
        ("ten/1m", "'ten' is not a whole number"),
        ("5/1s burst 0", "the burst must be 1 to"),
        ("0/1s", "the count must be 1 to"),
        ("100/1 minute", "is not N/D or N/D burst B"),
        ("100/1w", "'1w' is not a duration"),
        ("100/400d", "at most 366d"),
        ("100/1m burst", "is not N/D or N/D burst B"),
        ("100/1m,", "an empty term"),
        ("", "at least one term"),
        ("1.5/1s", "'1.5' is not a whole number"),
        ("100/1m, 50/60s", "'100/1m' and '50/1m' have the same duration: keep the smaller"),
    ],
)
def test_a_bad_term_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits.parse(text)


def test_a_bad_term_stops_start_up_with_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RATEDISPATCH_LIMITS", "100/1m, 100/0s")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("RATEDISPATCH_LIMITS='100/1m, 100/0s' is invalid: ")
    assert "'100/0s'" in str(caught.value) and "\n" not in str(caught.value)


def test_unset_it_is_one_term_of_rate_limit_per_window() -> None:
    settings = make_settings(rate_limit=7, rate_window_seconds=0.5)
    assert settings.limits is None and list(settings.limit_terms.terms) == [Term(7, 500)]
    assert str(make_settings(limits="10/1s burst 3, 600/1m").limit_terms) == "10/1s burst 3, 600/1m"


def test_the_costliest_call_each_term_can_grant() -> None:
    limits = Limits.parse("10/1s burst 3, 600/1m")
    assert limits.max_cost == 3
    assert limits.refusal(3) is None
    refusal = limits.refusal(4)
    assert refusal is not None and "cost 4" in refusal and "10/1s burst 3" in refusal


@pytest.mark.parametrize("cost", ["0", "-1", "1.5", "1e9", "abc", "", " ", "٣"])
def test_a_cost_that_is_not_a_whole_number_of_one_or_more_is_an_invalid_entry(cost: str) -> None:
    with pytest.raises(InvalidTask, match="cost"):
        parse_entry("1-1", {"endpoint": "/a", "cost": cost})


def test_cost_is_an_instruction_not_a_query_parameter() -> None:
    task = parse_entry("1-1", {"endpoint": "/a", "cost": "12", "page": "2"})
    assert task.cost == 12 and task.query == (("page", "2"),)
    assert parse_entry("1-1", {"endpoint": "/a"}).cost == 1
