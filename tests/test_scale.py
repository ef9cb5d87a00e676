"""Large quotas: RATE_LIMIT up to 1,000,000 and CONCURRENCY up to 10,000 work, larger values are
refused at start-up, and a worker opens as many files as its concurrency needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from benchmarks.stack import Stack

from .e2e_support import wait_for

BIG = 10_000


def worker(env: dict[str, str], *, ulimit: str = "") -> subprocess.CompletedProcess[str]:
    """`ratedispatch worker` that exits at once (no Redis is needed to get that far)."""
    command = f"{ulimit} exec {sys.executable} -m ratedispatch worker"
    return subprocess.run(
        ["bash", "-c", command],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RATEDISPATCH_")},
            "RATEDISPATCH_API_BASE_URL": "http://127.0.0.1:9",
            "RATEDISPATCH_REDIS_URL": "redis://127.0.0.1:9/0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(("name", "value"), [("RATE_LIMIT", "1000001"), ("CONCURRENCY", "10001")])
def test_a_quota_or_concurrency_past_what_is_tested_is_refused_at_start_up(
    name: str, value: str
) -> None:
    done = worker({f"RATEDISPATCH_{name}": value})
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert f"RATEDISPATCH_{name}='{value}' is invalid" in line and "less than or equal" in line


def test_a_worker_says_exactly_what_to_raise_when_it_may_not_open_enough_files() -> None:
    # As root, a process may raise its own hard limit: drop the privilege to do so first.
    limit = "ulimit -Sn 1024 && ulimit -Hn 1024 &&"
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("setpriv is needed to drop CAP_SYS_RESOURCE")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RATEDISPATCH_")},
        "RATEDISPATCH_API_BASE_URL": "http://127.0.0.1:9",
        "RATEDISPATCH_CONCURRENCY": str(BIG),
    }
    done = subprocess.run(
        [*prefix, "bash", "-c", f"{limit} exec {sys.executable} -m ratedispatch worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert "RATEDISPATCH_CONCURRENCY=10000 needs up to 10256 open files" in line
    assert "at most 1024" in line and "ulimit -n 10256" in line


def test_a_worker_raises_its_own_open_file_limit_to_what_its_concurrency_needs() -> None:
    script = (
        "import resource; from ratedispatch.worker.service import open_files_for; "
        "open_files_for(10000); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        ["bash", "-c", f"ulimit -Sn 1024 && exec {sys.executable} -c '{script}'"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert int(done.stdout) == BIG + 256


@pytest.mark.e2e
def test_two_workers_with_a_quota_of_ten_thousand_drain_thirty_thousand_tasks_from_nginx() -> None:
    if shutil.which("nginx") is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is required in CI")
        pytest.skip("nginx is not installed")
    env = {
        "RATEDISPATCH_RATE_LIMIT": str(BIG),
        "RATEDISPATCH_RATE_WINDOW_SECONDS": "1",
        "RATEDISPATCH_CONCURRENCY": str(BIG),
        "RATEDISPATCH_HTTP_TIMEOUT_SECONDS": "20",
        "RATEDISPATCH_RECLAIM_IDLE_SECONDS": "60",
    }
    with Stack(env) as stack:
        assert stack.nginx is not None and stack.workers is not None
        workers = stack.workers
        stack.add_tasks(3 * BIG)
        started = time.monotonic()
        stack.start_workers(2)

        def drained() -> bool:
            assert workers.alive() == [0, 1], [workers.log(n)[-2000:] for n in (0, 1)]
            return int(stack.redis.xlen("external:api:results:stream")) >= 3 * BIG

        wait_for(drained, 240, "30,000 results")
        took = time.monotonic() - started
        assert stack.redis.xlen("external:api:tasks:dead:stream") == 0
        logs = [stack.workers.log(n) for n in (0, 1)]
        calls = stack.stop_api()
    assert not any("Traceback" in log for log in logs), logs
    assert len({c.task for c in calls}) == 3 * BIG
    assert all(c.status == 200 for c in calls)
    # The API's view (nginx logs whole ms): calls in any interval of one window's length.
    at = sorted(c.at for c in calls)
    busiest, first = 0, 0
    for last in range(len(at)):
        while at[last] - at[first] >= 1.0:
            first += 1
        busiest = max(busiest, last - first + 1)
    assert busiest <= BIG + BIG // 100, "at most the limit, give or take nginx's whole ms"
    print(f"\nscale: 30,000 tasks drained in {took:.1f}s by 2 workers at 10,000/10,000; "
          f"busiest 1 s at the API {busiest}")  # fmt: skip
