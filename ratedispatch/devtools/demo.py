"""`ratedispatch demo`: real workers, an embedded Redis (fakeredis with Lua), a mock API."""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import TextIO

import anyio
import fakeredis
import httpx

from ..apis import Api
from ..producer import build_entry, enqueue
from ..queue.entries import read_stream
from ..settings import Settings
from ..terms import Limits
from ..worker.dispatcher import Dispatcher
from .audit import Call, busiest, fixed_windows, fullest_bucket

PRIORITIES = ("high", "normal", "low")
# How late, as a share of the window, the mock API may see a call after its slot was taken.
OBSERVER_JITTER = 0.02
BASE_URL = "http://api.demo.invalid"
# Entries a worker dead-letters without calling: the demo shows that bad input loses nothing.
BAD_ENTRIES: tuple[dict[str, str], ...] = (
    {"user_id": "1", "priority": "high"},
    {"endpoint": "https://elsewhere.example/steal", "priority": "normal"},
    {"endpoint": "/orders", "method": "POST", "body": "{not json", "priority": "low"},
)


class MockApi:
    """The API: answers after a few ms, with a 503 on about 1 call in 25, logging every call."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.started = time.monotonic()
        self.calls: list[Call] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        priority = request.url.params.get("prio", "normal")
        self.calls.append(Call(time.monotonic() - self.started, request.url.path, priority))
        await anyio.sleep(self._rng.uniform(0.005, 0.03))
        if self._rng.random() < 0.04:
            return httpx.Response(503, json={"error": "try again"})
        return httpx.Response(200, json={"ok": True})


def embedded_workers(
    settings: Settings,
    server: fakeredis.FakeServer,
    api: Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
    count: int,
    apis: Mapping[str, Api] | None = None,
) -> list[Dispatcher]:
    """`count` workers on the embedded Redis, calling the in-process `api`."""
    return [
        Dispatcher(
            settings.model_copy(update={"consumer": f"demo-worker-{n}"}),
            fakeredis.FakeAsyncRedis(server=server),
            httpx.AsyncClient(transport=httpx.MockTransport(api)),
            apis=apis,
            rng=random.Random(n),
            read_block_ms=0,  # the embedded Redis does not wake blocked reads
        )
        for n in range(count)
    ]


def _bar(counts: Counter[str], limit: int) -> str:
    marks = "".join(p[0].upper() * counts[p] for p in PRIORITIES)
    return marks.ljust(limit, ".")


async def run_demo(
    tasks: int = 200,
    limit: int = 20,
    window: float = 1.0,
    workers: int = 3,
    out: TextIO | None = None,
    limits: Limits | None = None,
) -> bool:
    """Run the demo; True when the limits held, priority was honoured and every task finished.
    With `limits`, they replace `limit` per `window`, whose first term the picture shows."""
    out = out or sys.stdout  # looked up now: sys.stdout may have been replaced since import
    rng = random.Random(7)
    server = fakeredis.FakeServer()
    api = MockApi(rng)
    if limits is None:
        terms: dict[str, object] = {"rate_limit": limit, "rate_window_seconds": window}
        described = f"a limit of {limit} calls per {window:g}s window"
    else:
        # The picture shows the windows of the first N/D term (or of the first term).
        pictured = next((t for t in limits.terms if t.burst is None), limits.terms[0])
        limit, window = pictured.count, pictured.duration_ms / 1000
        terms = {"limits": str(limits)}
        described = f"the limits {limits} (the lines: windows of {pictured})"
    settings = Settings(
        redis_url="redis://embedded/0",
        api_base_url=BASE_URL,
        **terms,  # type: ignore[arg-type]
        concurrency=8,
        http_timeout_seconds=2,
        reclaim_idle_seconds=5,
        max_attempts=4,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=1,
        shutdown_grace_seconds=5,
    )
    producer = fakeredis.FakeAsyncRedis(server=server)
    for i in range(tasks):
        priority = rng.choices(PRIORITIES, weights=(2, 5, 3))[0]
        entry = build_entry(f"/users/{i}", priority=priority, fields={"prio": priority})
        await enqueue(producer, settings.stream, entry)
    for bad in BAD_ENTRIES:
        await producer.xadd(settings.stream, bad)  # type: ignore[arg-type]
    print(
        f"ratedispatch demo: {tasks} tasks (+{len(BAD_ENTRIES)} invalid) on an embedded Redis, "
        f"{workers} workers sharing {described}\n"
        f"each line is one window: H high, N normal, L low, . unused slot\n",
        file=out,
    )
    dispatchers = embedded_workers(settings, server, api, workers)
    results = settings.results_stream
    deadline = time.monotonic() + max(20.0, 3 * (tasks / limit) * window)
    shown = 0
    async with anyio.create_task_group() as tg:
        for dispatcher in dispatchers:
            await tg.start(dispatcher.run)
        while time.monotonic() < deadline:
            await anyio.sleep(0.05)
            closed = fixed_windows(api.calls, window, OBSERVER_JITTER * window)
            now = time.monotonic() - api.started
            while shown < len(closed) and (
                shown < len(closed) - 1 or now >= closed[-1][0].at + window
            ):
                counts = Counter(c.priority for c in closed[shown])
                print(
                    f"  window {shown + 1:3d}  {_bar(counts, limit)}  "
                    f"{sum(counts.values()):3d}/{limit}",
                    file=out,
                )
                shown += 1
            if await producer.xlen(results) >= tasks + len(BAD_ENTRIES):
                break
        for dispatcher in dispatchers:
            dispatcher.stop()
    for index, calls in enumerate(fixed_windows(api.calls, window, OBSERVER_JITTER * window)):
        if index >= shown:  # the last windows, still open when every task had finished
            counts = Counter(c.priority for c in calls)
            print(f"  window {index + 1:3d}  {_bar(counts, limit)}  "
                  f"{sum(counts.values()):3d}/{limit}", file=out)  # fmt: skip
    return await _summary(api, producer, settings, tasks, window, out)


def _terms_held(api: MockApi, limits: Limits, out: TextIO) -> bool:
    """Each term, judged from the calls as the mock API saw them."""
    times = [call.at for call in api.calls]
    held = True
    for term in limits.terms:
        seconds = term.duration_ms / 1000
        seen: float
        if term.burst is None:
            seen, most = busiest(times, seconds), term.count
            what = f"most calls in any {seconds:g}s: {seen}/{most}"
        else:
            # The mock API's clock and Redis's differ by a little: a hundredth of a unit.
            seen, most = round(fullest_bucket(times, term.count / seconds), 2), term.burst
            what = f"fullest bucket: {seen:g}/{most}"
        ok = seen <= most + (0.01 if term.burst else 0)
        held = held and ok
        print(f"  term {term}: {what}: {'held' if ok else 'EXCEEDED'}", file=out)
    return held


async def _summary(
    api: MockApi,
    redis: fakeredis.FakeAsyncRedis,
    settings: Settings,
    tasks: int,
    window: float,
    out: TextIO,
) -> bool:
    windows = fixed_windows(api.calls, window, OBSERVER_JITTER * window)
    most = max((len(w) for w in windows), default=0)
    statuses = Counter(
        e.fields[b"status"].decode() for e in await read_stream(redis, settings.results_stream)
    )
    dead = await read_stream(redis, settings.dead_letter_stream)
    last_high = max(
        (i for i, w in enumerate(windows) for c in w if c.priority == "high"), default=0
    )
    first_low = min((i for i, w in enumerate(windows) for c in w if c.priority == "low"), default=0)
    limits = settings.limit_terms
    shown = next((t for t in limits.terms if t.burst is None), None)
    limit = shown.count if shown else 0
    limit_held = shown is None or most <= limit
    priority_held = last_high <= first_low
    finished = statuses["ok"] + statuses["dead"] == tasks + len(BAD_ENTRIES)
    busiest_line = f"busiest window {most}/{limit}: limit {'held' if limit_held else 'EXCEEDED'}"
    if shown is None:
        busiest_line = f"busiest window {most} (paced terms only: judged below)"
    print(f"\n{len(api.calls)} calls in {len(windows)} windows; {busiest_line}", file=out)
    if settings.limits is not None:
        limit_held = _terms_held(api, limits, out) and limit_held
    print(
        f"{statuses['ok']} tasks ok, {statuses['dead']} dead-lettered, "
        f"{tasks + len(BAD_ENTRIES) - statuses['ok'] - statuses['dead']} unfinished",
        file=out,
    )
    for letter in dead:
        print(f"  dead letter: {letter.fields[b'reason'].decode()}", file=out)
    print(
        f"high priority went first: last high call in window {last_high + 1}, first low call "
        f"in window {first_low + 1}: {'yes' if priority_held else 'NO'}",
        file=out,
    )
    return limit_held and priority_held and finished
