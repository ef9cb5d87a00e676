"""Prometheus metrics and /healthz."""

from __future__ import annotations

import urllib.error
import urllib.request

import httpx
import pytest
import respx
from redis.asyncio import Redis

from ratedispatch.ops.status import collect
from ratedispatch.worker.metrics import Metrics, MetricsServer

from .conftest import API, make_settings
from .helpers import add_tasks, count_is, index_all, queue_for, running


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


@pytest.mark.anyio
async def test_a_worker_counts_calls_slots_retries_and_dead_letters(redis: Redis) -> None:
    settings = make_settings(max_attempts=2)
    await add_tasks(redis, settings, "normal", endpoint="/ok")
    await add_tasks(redis, settings, "normal", endpoint="/fail")
    await redis.xadd(settings.stream, {"endpoint": "http://evil.example/"})
    with respx.mock(base_url=API) as api:
        api.get("/ok/0").respond(200)
        api.get("/fail/0").respond(503)
        async with running(settings, redis) as dispatcher:
            await count_is(redis, settings.results_stream, 3)
            metrics = dispatcher.metrics
            assert dispatcher.health() == (True, "ok")
        assert dispatcher.health()[0] is False  # stopped
    assert sample(metrics, "ratedispatch_calls_total", outcome="ok", status_class="2xx") == 1
    assert sample(metrics, "ratedispatch_calls_total", outcome="retry", status_class="5xx") == 2
    assert sample(metrics, "ratedispatch_slots_granted_total") == 3
    assert sample(metrics, "ratedispatch_retries_total") == 1
    assert sample(metrics, "ratedispatch_dead_lettered_total", reason="exhausted") == 1
    assert sample(metrics, "ratedispatch_dead_lettered_total", reason="invalid") == 1
    assert sample(metrics, "ratedispatch_call_duration_seconds_count") == 3
    assert sample(metrics, "ratedispatch_queue_wait_seconds_count") == 2
    assert sample(metrics, "ratedispatch_in_flight") == 0
    exposition = metrics.exposition().decode()
    assert "evil.example" not in exposition and "/ok" not in exposition  # no task data


@pytest.mark.anyio
async def test_the_redis_gauges_show_what_status_reads(redis: Redis) -> None:
    settings = make_settings(rate_limit=10, rate_window_seconds=5)
    await add_tasks(redis, settings, "low", "normal", "high")
    queue = queue_for(settings, redis)
    await index_all(queue)
    assert len((await queue.take(2)).grants) == 2  # their calls are in flight
    metrics = Metrics()
    metrics.refresh(await collect(redis, settings))
    assert sample(metrics, "ratedispatch_window_used") == 2
    assert sample(metrics, "ratedispatch_window_limit") == 10
    assert sample(metrics, "ratedispatch_slots_busy") == 2
    assert sample(metrics, "ratedispatch_waiting", priority="low") == 1
    assert sample(metrics, "ratedispatch_pending") == 3


def test_the_endpoint_serves_metrics_and_health() -> None:
    metrics = Metrics()
    metrics.retries.inc()
    state = {"ok": True}
    server = MetricsServer(metrics, lambda: (state["ok"], "detail"), 0, host="127.0.0.1")
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert "ratedispatch_retries_total 1.0" in body
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert caught.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/", timeout=5)
        assert missing.value.code == 404
    finally:
        server.stop()


@pytest.mark.anyio
async def test_a_stopped_worker_leaves_no_consumer_record(redis: Redis) -> None:
    settings = make_settings()
    await add_tasks(redis, settings, "normal")
    with respx.mock(base_url=API) as api:
        api.route().respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 1)
            names = [c["name"] for c in await redis.xinfo_consumers(settings.stream, "api-workers")]
            assert b"worker-a" in names
    names = [c["name"] for c in await redis.xinfo_consumers(settings.stream, "api-workers")]
    assert b"worker-a" not in names


def test_metric_names_follow_prometheus_conventions() -> None:
    for family in Metrics().registry.collect():
        assert family.name.startswith("ratedispatch_")
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client appends _total
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
    _ = httpx  # respx patches httpx; imported for clarity of the dependency
