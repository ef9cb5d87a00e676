"""The throughput baseline: the same HTTP client stack as a worker, the same concurrency, no Redis.

python -m benchmarks.bare URL COUNT --concurrency 8 --transport aiohttp
"""

from __future__ import annotations

import argparse
import sys

import anyio

from ratedispatch.settings import load_settings
from ratedispatch.worker.httpclient import make_http_client


async def call_all(url: str, count: int, concurrency: int, transport: str) -> None:
    settings = load_settings(api_base_url=url, concurrency=concurrency, http_transport=transport)
    remaining = count

    async with make_http_client(settings) as http:

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                # As a worker calls a task: GET a path with a query, the Idempotency-Key header,
                # the body read.
                response = await http.get(
                    f"{url}/t?prio=normal", headers={"Idempotency-Key": "bare"}
                )
                await response.aread()

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(caller)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare")
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--transport", default="aiohttp")
    args = parser.parse_args()
    anyio.run(call_all, args.url, args.count, args.concurrency, args.transport)
    return 0


if __name__ == "__main__":
    sys.exit(main())
