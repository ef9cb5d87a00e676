"""Security: TLS (`rediss://`), a least-privilege Redis ACL user, and secrets kept out of every
output. Real redis-server only (TLS and ACLs are what is being tested)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
import respx
from redis.exceptions import NoPermissionError

from ratedispatch import Dispatcher
from ratedispatch.cli import main
from ratedispatch.connection import connect
from ratedispatch.keys import Keys
from ratedispatch.ops.dead import DeadLetters
from ratedispatch.ops.status import collect, render
from ratedispatch.queue import read_stream

from .conftest import API, _require_redis_server, make_settings
from .helpers import add_tasks, eventually
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

PASSWORD = "acl-pw-7f3e"
TOKEN = "api-token-91c2"
OPERATIONS = Path(__file__).parent.parent / "docs" / "operations.md"


def documented_acl() -> list[str]:
    """The least-privilege ACL exactly as docs/operations.md gives it (only the commands it
    runs, also inside its Lua scripts, only its keys): the test uses the documented rules."""
    block = OPERATIONS.read_text(encoding="utf-8").split("ACL SETUSER dispatcher ", 1)[1]
    rules = block.split("```", 1)[0].split()
    return [rule.replace("PASSWORD", PASSWORD) for rule in rules]


ACL_RULES = documented_acl()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt")
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "1",
        "-subj",
        "/CN=ratedispatch-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return cert, key, ca


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[RedisServer]:
    _require_redis_server()
    server = RedisServer(tmp_path / "redis", tls=make_certificates(tmp_path))
    server.start()
    yield server
    server.stop()


# docs/operations.md: with a key_field, the limits' three patterns become these two.
KEYED_PATTERNS = ["~rate:external:api", "~rate:external:api:*"]


@pytest.fixture(params=[False, True], ids=["plain", "keyed"])
def keyed(request: pytest.FixtureRequest) -> bool:
    """With a key_field, and the ACL's patterns as docs/operations.md gives them for it."""
    return bool(request.param)


@pytest.fixture
async def acl_url(tls_server: RedisServer, keyed: bool) -> AsyncIterator[str]:
    assert tls_server.tls is not None
    ca = tls_server.tls[2]
    admin = connect(f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={ca}")
    rules = ACL_RULES
    if keyed:
        rules = [r for r in rules if not r.startswith("~rate:")] + KEYED_PATTERNS
    await cast(Any, admin).execute_command("ACL", "SETUSER", "dispatcher", *rules)
    yield f"rediss://dispatcher:{PASSWORD}@127.0.0.1:{tls_server.port}/0?ssl_ca_certs={ca}"
    await admin.aclose()


async def test_a_worker_runs_over_tls_as_a_least_privilege_acl_user(
    acl_url: str, keyed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = {"key_field": "n", "key_limits": "5/1s"} if keyed else {}
    settings = make_settings(redis_url=acl_url, api_token=TOKEN, max_attempts=2, **keys)
    redis = connect(acl_url)
    await add_tasks(redis, settings, "high", "normal")
    await redis.xadd(settings.stream, {"endpoint": "http://evil.example/"})
    with respx.mock(base_url=API) as api:
        api.get("/t/0").respond(200)
        api.get("/t/1").respond(500)
        async with httpx.AsyncClient() as http:
            dispatcher = Dispatcher(settings, redis, http)
            async with anyio.create_task_group() as tg:
                await tg.start(dispatcher.run)

                async def done() -> bool:
                    return len(await read_stream(redis, settings.results_stream)) == 3

                await eventually(done)
                dispatcher.stop()
    status = await collect(redis, settings)  # `status` works with the same ACL
    assert status.dead_letters == 2 and status.group_exists
    dead = DeadLetters(redis, Keys.from_settings(settings))
    [letter, *_] = await dead.oldest()
    await dead.requeue(letter.id)  # and so does `dead requeue`
    outputs = [render(status), status.to_json(), caplog.text]
    for stream in (settings.results_stream, settings.dead_letter_stream, settings.stream):
        outputs += [repr(e.fields) for e in await read_stream(redis, stream)]
    for secret in (PASSWORD, TOKEN):
        assert all(secret not in text for text in outputs), secret
    await redis.aclose()


async def test_the_acl_really_is_narrow(acl_url: str) -> None:
    redis = connect(acl_url)
    with pytest.raises(NoPermissionError):
        await redis.flushall()
    with pytest.raises(NoPermissionError):
        await redis.set("someone:else:key", 1)
    await redis.aclose()


def test_a_tls_server_without_the_ca_is_one_clear_line_and_exit_1(
    tls_server: RedisServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # From the environment: a password is never accepted in a flag (`ps` would show it).
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.port}/0"
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", url)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "certificate verify failed" in err
    assert PASSWORD not in err
