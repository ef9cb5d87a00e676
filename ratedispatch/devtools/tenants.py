"""`ratedispatch demo --tenants`: many tenants and two APIs in one fleet, on an embedded Redis.

One tenant's bulk import is queued first; small tenants arrive while it waits. The tenants take
turns at the API's limit, each within its own limit, and a second API is called beside them
without waiting for either. The status an operator would see is printed as it runs.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

import anyio
import fakeredis
import httpx

from ..apis import DEFAULT, Api
from ..ops.status import collect, render
from ..producer import build_entry, enqueue
from ..settings import Settings
from .audit import busiest
from .demo import embedded_workers

BASE_URL = "http://tenants.demo.invalid"
CRM_URL = "http://crm.demo.invalid"
API_N, KEY_N, CRM_N = 10, 8, 3  # calls per second: the API's, each tenant's, the crm API's
API_LIMITS, KEY_LIMITS, CRM_LIMITS = f"{API_N}/1s", f"{KEY_N}/1s", f"{CRM_N}/1s"
BULK = 40  # the bulk import's tasks, queued first
SMALL = 6  # small tenants, one arriving every 0.5 s
PER_SMALL = 3
CRM_TASKS = 6


class MockApis:
    """Both APIs: every call's time, API and tenant, answered after a few ms."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls: list[tuple[float, str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        api = "crm" if request.url.host == httpx.URL(CRM_URL).host else "default"
        tenant = request.url.params.get("tenant", "")
        self.calls.append((time.monotonic() - self.started, api, tenant))
        await anyio.sleep(0.01)
        return httpx.Response(200, json={"ok": True})


async def run_tenants_demo(workers: int = 2, out: TextIO | None = None) -> bool:
    """Run it; True when every limit held, every small tenant was served within about a second
    of arriving, and every task finished."""
    out = out or sys.stdout
    server = fakeredis.FakeServer()
    api = MockApis()
    settings = Settings(
        redis_url="redis://embedded/0", api_base_url=BASE_URL, limits=API_LIMITS,
        key_field="tenant", key_limits=KEY_LIMITS, concurrency=4, http_timeout_seconds=2,
        reclaim_idle_seconds=5, shutdown_grace_seconds=5,
    )  # fmt: skip
    crm = settings.model_copy(
        update={
            "api_base_url": CRM_URL,
            "limits": CRM_LIMITS,
            "rate_key": "rate:demo:crm",
            "key_field": None,
            "key_limits": None,
        }
    )
    apis = {DEFAULT: Api(DEFAULT, settings), "crm": Api("crm", crm)}
    producer = fakeredis.FakeAsyncRedis(server=server)
    for n in range(BULK):
        entry = build_entry(f"/import/{n}", fields={"tenant": "bulk"})
        await enqueue(producer, settings.stream, entry)
    for n in range(CRM_TASKS):
        await enqueue(producer, settings.stream, build_entry(f"/contacts/{n}", api="crm"))
    print(
        f"ratedispatch demo --tenants: API default at {API_LIMITS}, each tenant at {KEY_LIMITS};\n"
        f"tenant 'bulk' queued {BULK} tasks first, {SMALL} small tenants arrive with {PER_SMALL} "
        f"each, one every 0.5 s; API 'crm' at {CRM_LIMITS} beside them ({CRM_TASKS} tasks).\n"
        "each line is one second: the calls of each tenant (and of crm)\n",
        file=out,
    )
    dispatchers = embedded_workers(settings, server, api, workers, apis)
    total = BULK + SMALL * PER_SMALL + CRM_TASKS
    arrived: dict[str, float] = {}
    deadline = time.monotonic() + 30
    shown, status_shown = 0, False
    async with anyio.create_task_group() as tg:
        for dispatcher in dispatchers:
            await tg.start(dispatcher.run)
        while time.monotonic() < deadline:
            now = time.monotonic() - api.started
            due = min(SMALL, int(now / 0.5))
            while len(arrived) < due:
                tenant = f"small-{len(arrived) + 1}"
                arrived[tenant] = time.monotonic() - api.started
                for n in range(PER_SMALL):
                    entry = build_entry(f"/orders/{n}", fields={"tenant": tenant})
                    await enqueue(producer, settings.stream, entry)
            while shown + 1 <= now:
                _second(api, shown, out)
                shown += 1
            if shown == 3 and not status_shown:  # what `ratedispatch status` shows meanwhile
                status = render(await collect(producer, settings, apis))
                print("\n" + _indent(status) + "\n", file=out)
                status_shown = True
            if await producer.xlen(settings.results_stream) >= total:
                break
            await anyio.sleep(0.05)
        for dispatcher in dispatchers:
            dispatcher.stop()
    _second(api, shown, out)
    return _summary(api, arrived, await producer.xlen(settings.results_stream), total, out)


def _second(api: MockApis, second: int, out: TextIO) -> None:
    calls = [c for c in api.calls if second <= c[0] < second + 1]
    tenants = Counter(tenant for _, name, tenant in calls if name == DEFAULT)
    crm = sum(1 for _, name, _ in calls if name == "crm")
    shown = "  ".join(f"{tenant} {n}" for tenant, n in sorted(tenants.items()))
    print(f"  second {second + 1:2d}  {sum(tenants.values()):2d} calls: {shown:<56} crm {crm}",
          file=out)  # fmt: skip


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _summary(
    api: MockApis, arrived: dict[str, float], results: int, total: int, out: TextIO
) -> bool:
    default = [c for c in api.calls if c[1] == DEFAULT]
    crm = [c[0] for c in api.calls if c[1] == "crm"]
    api_most = busiest([c[0] for c in default], 1.0)
    tenants = {c[2] for c in default}
    key_most = max((busiest([c[0] for c in default if c[2] == t], 1.0) for t in tenants), default=0)
    crm_most = busiest(crm, 1.0)
    # A small tenant never served waits for ever: the run's end stands in for its first call.
    end = max((c[0] for c in api.calls), default=0.0)
    waits = [
        min((at for at, _, t in default if t == tenant), default=end + 1) - came
        for tenant, came in arrived.items()
    ]
    limits_held = api_most <= API_N and key_most <= KEY_N and crm_most <= CRM_N
    fair = len(waits) == SMALL and max(waits) <= 1.5
    # The crm API waits for neither: its tasks go at its own pace from the start.
    crm_ideal = (CRM_TASKS - 1) // CRM_N
    beside = len(crm) == CRM_TASKS and max(crm) <= crm_ideal + 0.5
    print(
        f"\n{results} of {total} tasks done. Most calls in any 1 s: API default "
        f"{api_most}/{API_N}, one tenant {key_most}/{KEY_N}, crm {crm_most}/{CRM_N}: "
        f"{'held' if limits_held else 'EXCEEDED'}\n"
        f"each small tenant's first call came {max(waits, default=0):.2f}s after it arrived at "
        f"most, beside a bulk import of {BULK} queued before it: {'fair' if fair else 'NOT FAIR'}\n"
        f"crm's last call came at {max(crm, default=0):.2f}s (its own pace: {crm_ideal}s): "
        f"{'not held back' if beside else 'HELD BACK'}",
        file=out,
    )
    return limits_held and fair and beside and results == total
