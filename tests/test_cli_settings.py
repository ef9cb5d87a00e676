"""Each command shows and takes only the settings it reads, and no secret is a flag."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from ratedispatch import cli
from ratedispatch import settings as settings_module
from ratedispatch.cli import main, settings_of
from ratedispatch.keys import Keys
from ratedispatch.settings import Settings

from .redis_server import RedisServer, free_port

COMMANDS = {
    "worker": ["worker"],
    "enqueue": ["enqueue", "/a"],
    "status": ["status"],
    "dead list": ["dead", "list"],
    "dead requeue": ["dead", "requeue", "--all"],
    "dead purge": ["dead", "purge", "--yes"],
}
WORKER_ONLY = ("--concurrency", "--metrics-port", "--http-transport")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env`, no variables; and should a flag be taken that must not be, the command meets
    no Redis (nothing listens on a fresh free port) and no worker starts."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RATEDISPATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    async def no_worker(settings: Settings) -> None:
        pytest.fail("a worker started")

    monkeypatch.setattr(cli, "run_worker", no_worker)


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


def test_enqueue_help_shows_no_worker_setting_and_worker_help_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    enqueue = help_of(["enqueue"], capsys)
    assert not [flag for flag in WORKER_ONLY if flag in enqueue]
    worker = help_of(["worker"], capsys)
    assert all(flag in worker for flag in WORKER_ONLY)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_shows_exactly_its_settings(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(command.split(), capsys)
    shown = set(re.findall(r"^  --([a-z-]+) VALUE", text, flags=re.MULTILINE))
    assert shown == {name.replace("_", "-") for name in settings_of(command)}


def test_a_setting_a_command_does_not_read_is_an_unknown_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["enqueue", "/a", "--concurrency", "3"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --concurrency 3" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("form", [["--api-token", "tok-5e1f"], ["--api-token=tok-5e1f"]])
def test_the_api_token_is_never_a_flag(
    command: str, form: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert "--api-token" not in help_of(command.split(), capsys)
    with pytest.raises(SystemExit) as caught:
        main([*COMMANDS[command], *form])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "RATEDISPATCH_API_TOKEN" in err and "tok-5e1f" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret-9a7b@h/0",
        "redis://user:secret-9a7b@h:6380/0",
        "rediss://h/0?password=secret-9a7b",
        "unix://:secret-9a7b@/run/redis.sock",
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_redis_url_flag_with_a_password_is_refused_without_echoing_it(
    command: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*COMMANDS[command], "--redis-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ratedispatch: --redis-url must not carry a password")
    assert "RATEDISPATCH_REDIS_URL" in err and ".env" in err
    assert "secret-9a7b" not in err and err.count("\n") == 1


def test_a_worker_api_base_url_flag_with_credentials_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["worker", "--api-base-url", "https://me:secret-9a7b@api.example.com"]) == 2
    err = capsys.readouterr().err
    assert "RATEDISPATCH_API_BASE_URL" in err and "secret-9a7b" not in err


class Recorder:
    """Settings that note every field read through them."""

    def __init__(self, real: Settings) -> None:
        self.real = real
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name in Settings.model_fields:
            self.read.add(name)
        derived = getattr(Settings, name, None)
        if isinstance(derived, property) and derived.fget is not None:
            return derived.fget(self)  # what it reads is read through the recorder too
        return getattr(self.real, name)


def test_each_command_reads_every_setting_it_takes_and_no_other(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_sync.Redis.from_url(redis_server.url).flushall()
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", redis_server.url)
    # Keys.from_settings derives every key name at once; `dead` uses two of them.
    keys = Recorder(Settings(_env_file=None))
    Keys.from_settings(keys)  # type: ignore[arg-type]
    recorders: list[Recorder] = []
    real_load = settings_module.load_settings

    def load_settings(**overrides: Any) -> Any:
        recorders.append(Recorder(real_load(**overrides)))
        return recorders[-1]

    monkeypatch.setattr(cli, "load_settings", load_settings)
    for command, argv in COMMANDS.items():
        if command == "worker":
            continue  # takes every setting but the secrets
        assert main(argv) == 0, command
        read, taken = recorders[-1].read, set(settings_of(command))
        assert taken <= read, (command, taken - read)
        extra = read - taken
        if command.startswith("dead"):
            extra -= keys.read
        assert not extra, (command, extra)
