"""`ratedispatch demo --headers`: an API that enforces its own quota and says so on every answer,
and a fleet configured far above it that follows what the API says, on an embedded Redis.

The API allows 10 calls in each second (fixed windows of the wall clock, 429 beyond) and says so
in the IETF draft's `RateLimit-Policy` and `RateLimit`; halfway through, it drops to 5, as a plan
downgrade would, and says that too. The workers are configured at 100/1s. Each second's calls
and 429s are printed, and what `ratedispatch status` shows meanwhile.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import anyio
import fakeredis
import httpx

from ..ops.status import collect, render
from ..producer import build_entry, enqueue
from ..settings import Settings
from .demo import embedded_workers
from .mockapi import Quota
from .tenants import _indent

BASE_URL = "http://announcing.demo.invalid"
LIMITS = "100/1s"  # ten times what the API allows
FIRST, THEN, SWITCH = 10, 5, 4.0  # calls per second, before and after SWITCH seconds
TASKS = 60


class AnnouncingApi:
    """The API: its own quota, announced on every answer; every call's time and status."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.quota = Quota(FIRST, 1.0, "draft", switch=(THEN, 1.0, SWITCH))
        self.calls: list[tuple[float, int]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        admitted, headers = self.quota.admit(time.time())
        status = 200 if admitted else 429
        self.calls.append((time.monotonic() - self.started, status))
        await anyio.sleep(0.01)
        return httpx.Response(status, headers=headers, json={"ok": admitted})


async def run_announced_demo(workers: int = 2, out: TextIO | None = None) -> bool:
    """Run it; True when every task finished, and 429s came only before the fleet first heard
    the API and right at the switch (at most one burst of calls in flight each time)."""
    out = out or sys.stdout
    server = fakeredis.FakeServer()
    api = AnnouncingApi()
    settings = Settings(
        redis_url="redis://embedded/0", api_base_url=BASE_URL, limits=LIMITS, concurrency=4,
        http_timeout_seconds=2, reclaim_idle_seconds=5, shutdown_grace_seconds=5,
        retry_backoff_seconds=0.2, retry_backoff_max_seconds=1, max_attempts=10,
    )  # fmt: skip
    producer = fakeredis.FakeAsyncRedis(server=server)
    for n in range(TASKS):
        await enqueue(producer, settings.stream, build_entry(f"/messages/{n}"))
    print(
        f"ratedispatch demo --headers: workers at {LIMITS}; the API allows {FIRST} calls a second "
        f"and says so on every answer\n(RateLimit-Policy, RateLimit); {SWITCH:g} s in, it drops "
        f"to {THEN} a second and says that too. {TASKS} tasks, {workers} workers.\n"
        "each line is one second: the calls the API admitted and those it refused (429)\n",
        file=out,
    )
    dispatchers = embedded_workers(settings, server, api, workers)
    deadline = time.monotonic() + 40
    shown, status_shown = 0, False
    async with anyio.create_task_group() as tg:
        for dispatcher in dispatchers:
            await tg.start(dispatcher.run)
        while time.monotonic() < deadline:
            now = time.monotonic() - api.started
            while shown + 1 <= now:
                _second(api, shown, out)
                shown += 1
            if shown == 2 and not status_shown:  # what `ratedispatch status` shows meanwhile
                print("\n" + _indent(render(await collect(producer, settings))) + "\n", file=out)
                status_shown = True
            if await producer.xlen(settings.results_stream) >= TASKS:
                break
            await anyio.sleep(0.05)
        for dispatcher in dispatchers:
            dispatcher.stop()
    _second(api, shown, out)
    done = await producer.xlen(settings.results_stream)
    refused = [at for at, status in api.calls if status == 429]
    burst = workers * settings.concurrency
    # 429s before the first answer came back, and at the switch; none anywhere else.
    first_answer = min((at for at, _ in api.calls), default=0.0) + 0.5
    stray = [at for at in refused if at > first_answer and not SWITCH - 0.5 <= at <= SWITCH + 1.5]
    ok = done == TASKS and len(refused) <= 2 * burst and not stray
    print(
        f"\n{done} of {TASKS} tasks done; {len(api.calls)} calls, {len(refused)} answered 429 "
        f"(a burst is {burst} calls: the workers' concurrency).\nConfigured at {LIMITS}, the "
        f"fleet kept to the {FIRST} and then {THEN} a second the API announced: "
        f"{'yes' if ok else 'NO'}",
        file=out,
    )
    return ok


def _second(api: AnnouncingApi, second: int, out: TextIO) -> None:
    calls = [status for at, status in api.calls if second <= at < second + 1]
    admitted, refused = calls.count(200), calls.count(429)
    print(f"  second {second + 1:2d}  {'#' * admitted:<10} {admitted:2d} admitted  "
          f"{'x' * refused}{' ' if refused else ''}{refused} refused", file=out)  # fmt: skip
