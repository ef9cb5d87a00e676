"""`ratedispatch worker`: the dispatcher, its metrics endpoint and gauges, and signal handling."""

from __future__ import annotations

import logging
import resource
import signal
from collections.abc import Mapping

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis

from ..apis import Api
from ..connection import MAX_CONNECTIONS, connect, socket_timeout_for
from ..errors import ConfigError
from ..ops import status
from ..settings import ENV_PREFIX, Settings
from .dispatcher import Dispatcher
from .httpclient import make_http_client, make_transport
from .metrics import Metrics, MetricsServer

log = logging.getLogger("ratedispatch")
GAUGE_REFRESH_SECONDS = 5.0
# Files a worker opens beside its HTTP connections: Redis connections (MAX_CONNECTIONS), the
# metrics server, the event loop, logs.
OTHER_FILES = MAX_CONNECTIONS + 192


def open_files_for(concurrency: int) -> int:
    """Raise this process's open-file limit to what CONCURRENCY needs: a connection to the API
    for each call in flight, and the rest. Returns the limit now in force; ConfigError when the
    hard limit is too low and cannot be raised."""
    needed = concurrency + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= needed:
        raised = (needed, hard)
    else:
        raised = (needed, needed)  # a privileged process may raise its hard limit too
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, raised)
    except (ValueError, OSError):
        raise ConfigError(
            f"{ENV_PREFIX}CONCURRENCY={concurrency} needs up to {needed} open files, but this "
            f"process may open at most {hard}: raise the limit (`ulimit -n {needed}`; "
            f"`--ulimit nofile={needed}` for docker run; LimitNOFILE={needed} for systemd) "
            "or lower the concurrency"
        ) from None
    log.info("open-file limit raised from %d to %d for the concurrency", soft, needed)
    return needed


async def run_worker(settings: Settings, apis: Mapping[str, Api] | None = None) -> None:
    """The worker service; `apis`: the APIs of RATEDISPATCH_CONFIG (None: the default API)."""
    open_files_for(settings.concurrency)
    log.info("effective settings: %s", settings.described())
    redis = connect(
        settings.redis_url,
        socket_timeout=socket_timeout_for(settings.reclaim_idle_seconds),
    )
    metrics = Metrics()
    transport = make_transport(settings)
    async with make_http_client(settings, transport) as http:
        dispatcher = Dispatcher(
            settings, redis, http, apis=apis, metrics=metrics, transport=transport
        )
        server = None
        if settings.metrics_port:
            server = MetricsServer(metrics, dispatcher.health, settings.metrics_port)
            server.start()
            log.info("metrics and /healthz on port %d", server.port)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_signal, dispatcher)
                if server is not None:
                    tg.start_soon(_refresh_gauges, metrics, redis, settings, apis)
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


async def _refresh_gauges(
    metrics: Metrics, redis: Redis, settings: Settings, apis: Mapping[str, Api] | None
) -> None:
    while True:
        try:
            metrics.refresh(await status.collect(redis, settings, apis))
        except (rexc.RedisError, OSError):
            log.debug("could not refresh the queue gauges", exc_info=True)
        await anyio.sleep(GAUGE_REFRESH_SECONDS)
