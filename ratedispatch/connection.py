"""The Redis client a worker or a command talks to Redis with."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def socket_timeout_for(reclaim_idle_seconds: float) -> float:
    """How long a worker waits for one Redis reply before it takes the connection for dead.

    Well under RECLAIM_IDLE_SECONDS: a worker whose connection hangs (a Redis host gone without
    a reset) must notice, reconnect and record its outcomes before the others take its entries
    over as abandoned; above the 1 s of a blocking read. 15 s at the default 60 s."""
    return max(2.0, min(15.0, reclaim_idle_seconds / 4))


# Connections one client opens at most; a command waits for a free one beyond that. A worker's
# loops need one each, and its calls one each only while they record an outcome: at a
# CONCURRENCY of 10,000, an unbounded pool could open thousands at once, past the open-file
# limit and Redis's maxclients (10,000 by default, for the whole fleet).
MAX_CONNECTIONS = 64


def connect(url: str, *, socket_timeout: float = 15.0) -> Redis:
    """A client for `url`; retries are ours (RedisGuard), so redis-py's own are off."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=None,  # wait for a connection as long as it takes: each one is in use briefly
        decode_responses=False,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
