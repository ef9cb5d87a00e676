"""What every scenario runs on: a fresh redis-server, the API in a process of its own (its log
of calls is the independent observer), real `ratedispatch worker` processes, and readings of
Redis's command counts and the workers' CPU time and memory from /proc."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import redis as redis_sync

from ratedispatch.devtools.audit import Call
from tests.e2e_support import Workers, wait_for
from tests.redis_server import RedisServer, free_port

STREAM = "external:api:tasks:stream"
RESULTS = "external:api:results:stream"
GROUP = "api-workers"
# Commands the harness itself sends between a reset and a reading; workers send none of them.
# (Workers do send ZCARD and XINFO CONSUMERS: those count.)
HARNESS_COMMANDS = ("xlen", "info", "config|resetstat")


NGINX_CONF = """
daemon off;
master_process off;
worker_rlimit_nofile {files};
error_log {workdir}/nginx-error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
    {limit_zone}
    log_format calls '$msec $http_idempotency_key $arg_prio $status';
    access_log {workdir}/calls.log calls buffer=1m flush=5s;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type application/json; {answer} }}
    }}
}}
"""


class Stack:
    """redis-server + the API + workers for one measurement; everything stops on exit.

    The API is nginx when it is installed (`api="auto"`): its access log is an observer outside
    Python altogether, but its clock is the wall clock in whole milliseconds. Otherwise, or with
    `api="mock"`, it is `python -m ratedispatch.devtools.mockapi`, which records CLOCK_MONOTONIC
    to the microsecond. `clock()` is the producer-side clock that matches the observer's."""

    def __init__(
        self,
        workers_env: Mapping[str, str],
        *,
        api: str = "auto",
        latency: float = 0.0,
        limit_req: tuple[int, int] | None = None,
        mock_args: Sequence[str] = (),
    ) -> None:
        """`latency`: the mock API's seconds per answer. `limit_req`: (rate per second, burst)
        of an nginx `limit_req ... nodelay` in front of the API, which answers 429 past it.
        `mock_args`: more options of the mock API (`--quota 20/2`), which it then is."""
        if mock_args:
            api = "mock"
        self.workdir = Path(tempfile.mkdtemp(prefix="ratedispatch-bench-"))
        self.redis_server = RedisServer(self.workdir)
        self.nginx = shutil.which("nginx") if api == "auto" else None
        self.clock = time.time if self.nginx else time.monotonic
        self.api_port = free_port()
        self.api_log = self.workdir / "calls.log"
        self._api: subprocess.Popen[bytes] | None = None
        self._env = dict(workers_env)
        self._latency = latency
        self._limit_req = limit_req
        self._mock_args = tuple(mock_args)
        self.workers: Workers | None = None
        self.client: redis_sync.Redis | None = None

    def _concurrency(self) -> int:
        return int(self._env.get("RATEDISPATCH_CONCURRENCY", "16"))

    @property
    def api_name(self) -> str:
        return "nginx" if self.nginx else "mockapi"

    def __enter__(self) -> Stack:
        self.redis_server.start()
        self.client = redis_sync.Redis.from_url(self.redis_server.url)
        if self.nginx:
            conf = self.workdir / "nginx.conf"
            # A connection per call in flight, for every worker.
            connections = max(4096, 2 * self._concurrency())
            zone, answer = "", """return 200 '{"ok": true}';"""
            if self._limit_req is not None:
                rate, burst = self._limit_req
                # One key for every call (all come from 127.0.0.1): an empty key is not limited.
                zone = f"limit_req_zone $binary_remote_addr zone=api:1m rate={rate}r/s;"
                # `return` answers before limit_req runs (nginx's rewrite phase comes first):
                # behind a limit, the answer is a file.
                (self.workdir / "ok.json").write_text('{"ok": true}')
                answer = (
                    f"limit_req zone=api burst={burst} nodelay; limit_req_status 429; "
                    f"root {self.workdir}; try_files /ok.json =404;"
                )
            conf.write_text(
                NGINX_CONF.format(
                    workdir=self.workdir,
                    port=self.api_port,
                    connections=connections,
                    files=2 * connections + 64,
                    limit_zone=zone,
                    answer=answer,
                )
            )
            command = [self.nginx, "-c", str(conf), "-p", str(self.workdir), "-e", "stderr"]
        else:
            command = [sys.executable, "-m", "ratedispatch.devtools.mockapi", "--host", "127.0.0.1",
                       "--port", str(self.api_port), "--latency", str(self._latency), "--quiet",
                       "--log", str(self.api_log), *self._mock_args]  # fmt: skip
        self._api = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(lambda: listening(self.api_port), 10, f"the API ({self.api_name})")
        env = {
            "RATEDISPATCH_REDIS_URL": self.redis_server.url,
            "RATEDISPATCH_API_BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "RATEDISPATCH_METRICS_PORT": "0",
            "RATEDISPATCH_LOG_LEVEL": "WARNING",
            **self._env,
        }
        self.workers = Workers(self.workdir, env)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.workers is not None:
            self.workers.terminate_all()
        self._stop_api()
        self.redis_server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def redis(self) -> redis_sync.Redis:
        assert self.client is not None
        return self.client

    def start_workers(self, count: int, **extra_env: str) -> list[int]:
        """Start workers (with `extra_env` added to theirs) and wait until each has joined the
        group; returns their pids."""
        assert self.workers is not None
        first = len(self.workers.processes)
        self.workers.start(count, **extra_env)
        names = {f"worker-{n}".encode() for n in range(first, first + count)}

        def joined() -> bool:
            try:
                rows: list[dict[str, Any]] = self.redis.xinfo_consumers(STREAM, GROUP)
            except redis_sync.ResponseError:  # no stream or group yet
                return False
            return names <= {row["name"] for row in rows}

        wait_for(joined, 30, f"{count} workers to join the group")
        return [p.pid for p in self.workers.processes[first:]]

    def stop_workers(self) -> list[int | None]:
        assert self.workers is not None
        return self.workers.terminate_all()

    def stop_api(self) -> list[Call]:
        """Stop the API (it writes its log then); the calls it saw, in arrival order."""
        self._stop_api()
        return read_calls(self.api_log) if self.api_log.exists() else []

    def _stop_api(self) -> None:
        if self._api is not None and self._api.poll() is None:
            # nginx writes its buffered log on a graceful stop (SIGQUIT); the mock on SIGTERM.
            self._api.send_signal(signal.SIGQUIT if self.nginx else signal.SIGTERM)
            self._api.wait(30)

    def add_tasks(self, count: int, priority: str = "normal") -> list[str]:
        """XADD `count` tasks, pipelined; their entry ids."""
        ids: list[str] = []
        for start in range(0, count, 1000):
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(min(1000, count - start)):
                pipe.xadd(STREAM, {"endpoint": "/t", "priority": priority, "prio": priority})
            ids += [i.decode() for i in pipe.execute()]
        return ids

    def wait_results(self, count: int, timeout: float) -> None:
        wait_for(lambda: self.redis.xlen(RESULTS) >= count, timeout, f"{count} results")

    def commands(self) -> int:
        """Commands Redis has run since the last reset, the harness's own left out."""
        stats = cast(dict[str, dict[str, int]], self.redis.info("commandstats"))
        return sum(
            row["calls"]
            for name, row in stats.items()
            if name.removeprefix("cmdstat_") not in HARNESS_COMMANDS
        )

    def reset_commands(self) -> None:
        self.redis.config_resetstat()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    return (
        f"{model}, {os.cpu_count()} cores; Python {sys.version.split()[0]}; Redis "
        f"{redis_version.removeprefix('v=')}; {os.uname().sysname} {os.uname().release}"
    )


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def read_calls(path: Path) -> list[Call]:
    """An API log (the mock API's, or nginx's where `-` is an empty field), by arrival."""
    calls = []
    for line in path.read_text().splitlines():
        at, key, prio, status = (v if v != "-" else "" for v in line.split(" "))
        calls.append(Call(float(at), key, prio or "normal", int(status)))
    return sorted(calls, key=lambda c: c.at)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))
