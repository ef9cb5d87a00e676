"""`ratedispatch worker`: the dispatcher, its metrics endpoint and gauges, and signal handling."""

from __future__ import annotations

import logging
import signal

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis

from ..connection import connect, socket_timeout_for
from ..ops import status
from ..settings import Settings
from ..worker.dispatcher import Dispatcher
from ..worker.httpclient import make_http_client, make_transport
from ..worker.metrics import Metrics, MetricsServer

log = logging.getLogger("ratedispatch")
GAUGE_REFRESH_SECONDS = 5.0


async def run_worker(settings: Settings) -> None:
    log.info("effective settings: %s", settings.described())
    redis = connect(
        settings.redis_url,
        socket_timeout=socket_timeout_for(settings.reclaim_idle_seconds),
    )
    metrics = Metrics()
    transport = make_transport(settings)
    async with make_http_client(settings, transport) as http:
        dispatcher = Dispatcher(settings, redis, http, metrics=metrics, transport=transport)
        server = None
        if settings.metrics_port:
            server = MetricsServer(metrics, dispatcher.health, settings.metrics_port)
            server.start()
            log.info("metrics and /healthz on port %d", server.port)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_signal, dispatcher)
                if server is not None:
                    tg.start_soon(_refresh_gauges, metrics, redis, settings)
                await dispatcher.run()
                tg.cancel_scope.cancel()
        finally:
            if server is not None:
                server.stop()
    await redis.aclose()


async def _stop_on_signal(dispatcher: Dispatcher) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(
                "%s received: taking nothing new, finishing calls in flight",
                signal.Signals(signum).name,
            )
            dispatcher.stop()


async def _refresh_gauges(metrics: Metrics, redis: Redis, settings: Settings) -> None:
    while True:
        try:
            metrics.refresh(await status.collect(redis, settings))
        except (rexc.RedisError, OSError):
            log.debug("could not refresh the queue gauges", exc_info=True)
        await anyio.sleep(GAUGE_REFRESH_SECONDS)
