"""Both HTTP transports carry a call to a real local server, and a refused connection is an
outcome to retry, never a crash."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ratedispatch.devtools.mockapi import Recorder, serve
from ratedispatch.worker.httpclient import make_http_client
from ratedispatch.worker.outcome import Verdict, classify_exception, classify_response

from .conftest import make_settings
from .redis_server import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only, as the worker does


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_each_transport_calls_the_api_and_classifies_a_refused_connection(
    transport: str,
) -> None:
    settings = make_settings(http_transport=transport, concurrency=4)
    recorder, stop, ready = Recorder(latency=0, fail_rate=0), asyncio.Event(), asyncio.Event()
    port = free_port()
    server = asyncio.create_task(
        serve("127.0.0.1", port, recorder, stop=stop, report=False, ready=ready)
    )
    await ready.wait()
    try:
        async with make_http_client(settings) as http:
            calls = [
                http.post(f"http://127.0.0.1:{port}/t?prio=high", headers={"Idempotency-Key": k})
                for k in ("1-0", "2-0", "3-0", "4-0", "5-0", "6-0")
            ]
            responses = await asyncio.gather(*calls)
            assert [classify_response(r).verdict for r in responses] == [Verdict.OK] * 6
            assert sorted(key for _, key, _, _ in recorder.calls) == [
                "1-0", "2-0", "3-0", "4-0", "5-0", "6-0"
            ]  # fmt: skip
            with pytest.raises(httpx.TransportError) as refused:
                await http.get(f"http://127.0.0.1:{free_port()}/t")
            assert classify_exception(refused.value).verdict is Verdict.RETRY
    finally:
        stop.set()
        await server
