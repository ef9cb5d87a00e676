"""Every contract variable, its default, and one clear line (exit 2) for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratedispatch.cli import main
from ratedispatch.errors import ConfigError
from ratedispatch.settings import Settings, load_settings, mask_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    import os

    for name in list(os.environ):
        if name.startswith("RATEDISPATCH_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_contracts() -> None:
    s = load_settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert (s.stream, s.group, s.rate_key) == (
        "external:api:tasks:stream",
        "api-workers",
        "rate:external:api",
    )
    assert (s.rate_limit, s.rate_window_seconds, s.concurrency) == (100, 60.0, 16)
    assert (s.http_timeout_seconds, s.max_attempts, s.reclaim_idle_seconds) == (10.0, 5, 60.0)
    assert s.dead_letter_stream == "external:api:tasks:dead:stream"
    assert (s.results_stream, s.results_maxlen) == ("external:api:results:stream", 100_000)
    assert (s.delete_acked, s.max_body_bytes, s.metrics_port) == (True, 1_048_576, 9108)
    assert (s.log_level, s.log_format, s.shutdown_grace_seconds) == ("INFO", "text", 30.0)
    assert s.api_base_url is None and s.api_token is None
    assert "-" in s.consumer


def test_environment_then_dotenv_then_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("RATEDISPATCH_RATE_LIMIT=7\nRATEDISPATCH_CONCURRENCY=3\n")
    monkeypatch.setenv("RATEDISPATCH_CONCURRENCY", "5")
    monkeypatch.setenv("RATEDISPATCH_RATE_WINDOW_SECONDS", "0.5")
    s = load_settings()
    assert (s.rate_limit, s.concurrency, s.rate_window_seconds) == (7, 5, 0.5)
    assert load_settings(concurrency="9").concurrency == 9


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RATE_LIMIT", "abc", "RATEDISPATCH_RATE_LIMIT='abc' is invalid: expected a valid integer"),
        ("RATE_LIMIT", "0", "RATEDISPATCH_RATE_LIMIT='0' is invalid: expected greater than or"),
        ("RATE_WINDOW_SECONDS", "0", "RATEDISPATCH_RATE_WINDOW_SECONDS='0' is invalid"),
        ("REDIS_URL", "http://x", "RATEDISPATCH_REDIS_URL='http://x' is invalid: expected a redis"),
        ("API_BASE_URL", "ftp://x", "RATEDISPATCH_API_BASE_URL='ftp://x' is invalid"),
        ("DELETE_ACKED", "maybe", "RATEDISPATCH_DELETE_ACKED='maybe' is invalid"),
        ("HTTP_TRANSPORT", "curl", "RATEDISPATCH_HTTP_TRANSPORT='curl' is invalid"),
        ("LOG_FORMAT", "xml", "RATEDISPATCH_LOG_FORMAT='xml' is invalid"),
        ("RECLAIM_IDLE_SECONDS", "5", "RATEDISPATCH_RECLAIM_IDLE_SECONDS=5 must exceed"),
        ("RATE_LIMT", "5", "RATEDISPATCH_RATE_LIMT is not a ratedispatch setting"),
    ],
)
def test_a_bad_value_is_one_line_naming_variable_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(f"RATEDISPATCH_{variable}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)


def test_worker_with_bad_config_exits_2_with_one_line_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RATEDISPATCH_RATE_LIMIT", "-1")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RATEDISPATCH_RATE_LIMIT='-1'" in err
    assert "Traceback" not in err


def test_worker_without_api_base_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == 2
    assert "RATEDISPATCH_API_BASE_URL is not set" in capsys.readouterr().err


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert mask_url("redis://user:hunter2@host:6380/1") == "redis://user:***@host:6380/1"
    monkeypatch.setenv("RATEDISPATCH_API_TOKEN", "tok-123")
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", "rediss://:pw-456@cache:6379/0")
    shown = str(load_settings().described())
    assert "tok-123" not in shown and "pw-456" not in shown
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", "ftp://:pw-456@cache")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "pw-456" not in str(caught.value)


def test_settings_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Settings(_env_file=None).rate_limit = 5  # type: ignore[misc]


def test_the_reserved_consumer_name_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RATEDISPATCH_API_BASE_URL", "http://api.test")
    assert main(["worker", "--consumer", "ratedispatch:waiting"]) == 2
    assert "RATEDISPATCH_CONSUMER='ratedispatch:waiting' is invalid" in capsys.readouterr().err


def test_a_hung_redis_connection_is_given_up_well_before_entries_are_reclaimed() -> None:
    from ratedispatch.connection import socket_timeout_for

    # a quarter of RECLAIM_IDLE_SECONDS, at least the 1 s of a blocking read and then some
    assert [socket_timeout_for(s) for s in (5, 20, 60, 600)] == [2.0, 5.0, 15.0, 15.0]


def test_a_password_in_the_query_or_in_the_api_url_is_masked_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert mask_url("redis://host:6379/0?password=pw-1&db=2") == (
        "redis://host:6379/0?password=***&db=2"
    )
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", "redis://cache:6379/0?password=pw-456")
    monkeypatch.setenv("RATEDISPATCH_API_BASE_URL", "https://me:pw-789@api.example.com")
    shown = str(load_settings().described())
    assert "pw-456" not in shown and "pw-789" not in shown
    assert "https://me:***@api.example.com" in shown


def test_key_settings_need_a_key_field() -> None:
    with pytest.raises(ConfigError, match="RATEDISPATCH_KEY_LIMITS needs RATEDISPATCH_KEY_FIELD"):
        load_settings(key_limits="5/1s")
    with pytest.raises(ConfigError, match="'cost' is a field ratedispatch reads itself"):
        load_settings(key_field="cost")
