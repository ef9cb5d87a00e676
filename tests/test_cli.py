"""The command line: enqueue, demo, logs; one clear line and an exit code when things are wrong."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import cast

import pytest
import redis as redis_sync

from ratedispatch.cli import main
from ratedispatch.logs import configure

from .redis_server import RedisServer, free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RATEDISPATCH_"):
            monkeypatch.delenv(name)


def test_enqueue_prints_the_entry_id_of_a_plain_entry(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.delete("external:api:tasks:stream")
    code = main(
        [
            "enqueue", "/profile", "--priority", "high", "--field", "user_id=123",
            "--method", "post", "--body", '{"a": 1}', "--header", "X-Trace=t1",
            "--redis-url", redis_server.url,
        ]
    )  # fmt: skip
    assert code == 0
    entry_id = capsys.readouterr().out.strip()
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange("external:api:tasks:stream"))
    [(found, fields)] = rows
    assert found.decode() == entry_id
    assert fields == {
        b"endpoint": b"/profile",
        b"priority": b"high",
        b"user_id": b"123",
        b"method": b"post",
        b"body": b'{"a": 1}',
        b"headers": b'{"X-Trace": "t1"}',
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "http://evil.example/"], "would be dead-lettered: endpoint"),
        (["enqueue", "/a", "--priority", "urgent"], "priority 'urgent'"),
        (["enqueue", "/a", "--body", "{x"], "'body' is not valid JSON"),
        (["enqueue", "/a", "--field", "novalue"], "--field 'novalue' is not NAME=VALUE"),
        (["enqueue", "/a", "--field", "priority=high"], "reserved"),
        # `status` reads the limit (enqueue does not, and has no such flag: test_cli_settings.py)
        (["status", "--rate-limit", "zero"], "RATEDISPATCH_RATE_LIMIT='zero'"),
        (["status", "--limits", "100/0s"], "RATEDISPATCH_LIMITS='100/0s' is invalid"),
        (["status", "--limits", "ten/1m"], "'ten' is not a whole number"),
        (["status", "--limits", "5/1s burst 0"], "the burst must be 1 to"),
        (["status", "--limits", "5/1s", "--rate-limit", "5"], "LIMITS replaces"),
        (["enqueue", "/a", "--cost", "0"], "cost '0' is not a whole number of 1 or more"),
        (["enqueue", "/a", "--cost", "1e9"], "cost '1e9' is not a whole number"),
        (["demo", "--tasks", "0"], "demo:"),
        (["demo", "--limits", "20/1 s"], "demo: --limits '20/1 s': term '20/1 s'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["launch"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_enqueue_to_an_unreachable_redis_exits_1_with_the_url_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", url)  # a password is never a flag
    assert main(["enqueue", "/a"]) == 1
    err = capsys.readouterr().err
    assert "redis://:***@127.0.0.1" in err and "hunter2" not in err
    assert err.count("\n") == 1


def test_demo_runs_on_the_embedded_default_and_reports_the_limit_held(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--tasks", "60", "--limit", "20", "--window", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "window   1" in out
    assert "limit held" in out
    assert "60 tasks ok, 3 dead-lettered, 0 unfinished" in out
    assert "high priority went first" in out and out.rstrip().endswith("yes")


def test_demo_shows_two_terms_at_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tasks", "50", "--limits", "10/500ms burst 4, 20/2s"]) == 0
    out = capsys.readouterr().out
    assert "sharing the limits 10/500ms burst 4, 20/2s (the lines: windows of 20/2s)" in out
    assert "term 10/500ms burst 4: fullest bucket: " in out
    assert "term 20/2s: most calls in any 2s: 20/20: held" in out
    assert "50 tasks ok" in out


def test_demo_of_tenants_shows_the_turns_the_apis_and_the_busiest_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--tenants"]) == 0
    out = capsys.readouterr().out
    assert "second  1" in out and "bulk" in out and "small-1" in out
    # What `status` shows meanwhile: both APIs, and the busiest keys of the default one.
    assert "api crm" in out and "keys     by tenant:" in out and "busiest 'bulk'" in out
    assert "64 of 64 tasks done" in out and ": held" in out and ": fair" in out
    assert "not held back" in out


def test_demo_of_headers_shows_the_fleet_following_the_api(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--headers"]) == 0
    out = capsys.readouterr().out
    assert "second  1" in out and "admitted" in out
    # What `status` shows meanwhile: the API's word beside the limits, and its quota carried.
    assert "the API says" in out and "carried  api 10/1s" in out
    assert "60 of 60 tasks done" in out and out.rstrip().endswith("announced: yes")


def test_demo_takes_one_story_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tenants", "--headers"]) == 2
    assert "one at a time" in capsys.readouterr().err


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure("INFO", "json")
    logging.getLogger("ratedispatch.worker").warning("task %s dead-lettered", "1-1")
    line = capsys.readouterr().err.strip()
    record = json.loads(line)
    assert record["level"] == "WARNING" and record["message"] == "task 1-1 dead-lettered"
    assert {"ts", "logger"} <= set(record)
    configure("INFO", "text")


def use_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, more: str, limits: str = "5000/1h"
) -> Path:
    """RATEDISPATCH_CONFIG naming a file with the API `github` (and `more` keys in its table)."""
    config = tmp_path / "apis.toml"
    config.write_text(
        f'[apis.github]\nbase_url = "https://api.github.com"\nlimits = "{limits}"\n{more}'
    )
    monkeypatch.setenv("RATEDISPATCH_CONFIG", str(config))
    return config


def test_enqueue_for_an_api_that_the_config_file_names(
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_config(tmp_path, monkeypatch, "")
    client = redis_sync.Redis.from_url(redis_server.url)
    client.delete("external:api:tasks:stream")
    assert main(["enqueue", "/repos", "--api", "github", "--redis-url", redis_server.url]) == 0
    entry_id = capsys.readouterr().out.strip()
    [(found, fields)] = cast(
        list[tuple[bytes, dict[bytes, bytes]]], client.xrange("external:api:tasks:stream")
    )
    assert found.decode() == entry_id and fields[b"api"] == b"github"
    assert main(["enqueue", "/x", "--api", "gitlab", "--redis-url", redis_server.url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no API is named 'gitlab': the known ones are default, github" in err
    assert client.xlen("external:api:tasks:stream") == 1


def test_a_worker_with_a_bad_config_file_exits_2_with_one_line_naming_the_table_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = use_config(tmp_path, monkeypatch, "", limits="5000/1x")
    monkeypatch.setenv("RATEDISPATCH_API_BASE_URL", "https://api.example.com")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"RATEDISPATCH_CONFIG={config}: [apis.github] limits='5000/1x'" in err


def test_status_shows_every_api_of_the_config_file_without_their_tokens(
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The token's variable is not set where `status` runs: it reads no token.
    use_config(tmp_path, monkeypatch, 'token_env = "GITHUB_TOKEN"\n')
    redis_sync.Redis.from_url(redis_server.url).flushall()
    assert main(["status", "--json", "--redis-url", redis_server.url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [api["name"] for api in shown["apis"]] == ["default", "github"]
    assert shown["apis"][1]["terms"][0]["term"] == "5000/1h"
