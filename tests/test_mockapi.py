"""The mock API's own quota (`--quota`, `--announce`): it enforces fixed windows as a real API does
and says where a client stands, in the headers ratedispatch.headers reads."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ratedispatch.devtools.mockapi import Quota, Recorder, main, serve
from ratedispatch.headers import Quota as Announced
from ratedispatch.headers import read_announcement

from .redis_server import free_port


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the mock API serves on an asyncio loop


def test_a_quota_admits_n_per_fixed_window_and_says_so() -> None:
    quota = Quota(3, 2.0, "x-ratelimit")
    start = 2 * (time.time() // 2)  # windows of the wall clock, from the epoch
    times = [start + at for at in (0.0, 0.5, 1.0, 1.5, 2.1)]
    answers = [quota.admit(at) for at in times]
    assert [admitted for admitted, _ in answers] == [True, True, True, False, True]
    said = [
        read_announcement(dict(headers), at)
        for at, (_, headers) in zip(times, answers, strict=True)
    ]
    assert [s.remaining for s in said] == [2, 1, 0, 0, 2]
    assert said[0].quotas == (Announced(3),)
    refused = dict(answers[3][1])
    assert refused["Retry-After"] == "1"  # 0.5 s left in the window, rounded up
    # The reset is the window's end, exactly: an epoch second.
    assert [s.reset for s in said] == pytest.approx([2.0, 1.5, 1.0, 0.5, 1.9], abs=1e-3)


def test_a_quota_switches_when_told() -> None:
    quota = Quota(5, 1.0, "draft", switch=(2, 1.0, 3.0))
    start = time.time() // 1
    before = [quota.admit(start + 0.1 * n)[0] for n in range(6)]
    after = [quota.admit(start + 3.2 + 0.1 * n)[0] for n in range(3)]
    assert before == [True] * 5 + [False]
    assert after == [True, True, False]
    said = read_announcement(dict(quota.admit(start + 4.1)[1]), start + 4.1)
    assert said.quotas == (Announced(2, 1.0, "quota"),)


def test_the_drafts_headers_carry_the_policy() -> None:
    _, headers = Quota(10, 2.0, "draft").admit(4.5)
    said = read_announcement(dict(headers), time.time())
    assert (said.remaining, said.reset, said.quotas) == (9, 2.0, (Announced(10, 2.0, "quota"),))


@pytest.mark.anyio
async def test_the_server_answers_429_past_its_quota_with_the_headers() -> None:
    recorder = Recorder(0, 0, quota=Quota(3, 60.0, "x-ratelimit"))
    stop, ready, port = asyncio.Event(), asyncio.Event(), free_port()
    server = asyncio.create_task(
        serve("127.0.0.1", port, recorder, stop=stop, report=False, ready=ready)
    )
    await ready.wait()
    try:
        async with httpx.AsyncClient() as http:
            responses = [await http.get(f"http://127.0.0.1:{port}/t") for _ in range(5)]
    finally:
        stop.set()
        await server
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0", "0", "0"]
    assert "Retry-After" in responses[3].headers
    assert [status for *_, status in recorder.calls] == [200, 200, 200, 429, 429]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--quota", "ten/2"], "expected N/SECONDS"),
        (["--quota", "0/2"], "N must be at least 1"),
        (["--announce", "draft"], "need --quota"),
        (["--quota", "5/1", "--switch", "2/1"], "expected N/SECONDS@AFTER"),
        (["--quota", "5/1", "--switch", "0/1@3"], "N must be at least 1"),
    ],
)
def test_a_bad_quota_is_refused(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err
