"""The HTTP client a worker calls the API with: httpx as the API, the transport by setting.

httpx's own transport tops out early under concurrency (encode/httpx#3215: on the 2-core machine
of benchmarks/results.md, fewer requests per second at 16 concurrent than at 1); the aiohttp
transport keeps the httpx API (and respx in tests, through an injected transport) at several
times the rate. HTTP_TRANSPORT picks one; benchmarks/ measures both.
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from ..settings import Settings


def make_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    # One connection per call in flight, all kept alive: a call never waits for a connection.
    limits = httpx.Limits(
        max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
    )
    if settings.http_transport == "aiohttp":
        return AiohttpTransport(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)


def make_http_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=settings.http_timeout_seconds, transport=transport or make_transport(settings)
    )
