"""End-to-end harness: a local HTTP API that logs every call, and real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ratedispatch.devtools.audit import Call


class ApiServer:
    """The API on 127.0.0.1: answers 200 after `delay` seconds (or `?status=N`), logging calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[Call] = []
        self.storm_until = 0.0  # every call answers 503 until this monotonic time
        self._lock = threading.Lock()
        self._seen: Counter[str] = Counter()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                call = Call(
                    time.monotonic(),
                    self.headers.get("Idempotency-Key", ""),
                    query.get("prio", ["normal"])[0],
                )
                with api._lock:
                    api.calls.append(call)
                    api._seen[call.task] += 1
                    seen = api._seen[call.task]
                if api.delay:
                    time.sleep(api.delay)
                # OSError: the worker was killed, or gave up, mid-call
                with contextlib.suppress(OSError):
                    self._behave(query.get("mode", [""])[0], query, seen)

            def _behave(self, mode: str, query: dict[str, list[str]], seen: int) -> None:
                status = int(query.get("status", ["200"])[0])
                headers: dict[str, str] = {}
                body = b'{"ok": true}'
                if time.monotonic() < api.storm_until and not mode.startswith("429"):
                    status = 503
                elif mode == "slow":  # longer than the worker's HTTP timeout
                    time.sleep(float(query.get("sleep", ["3"])[0]))
                elif mode == "reset":  # a status line, then the connection drops
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                elif mode == "huge":  # 20 MB the worker must not keep
                    self.send_response(200)
                    self.send_header("Content-Length", str(20 * 1024 * 1024))
                    self.end_headers()
                    chunk = b"x" * 65536
                    for _ in range(320):
                        self.wfile.write(chunk)
                    return
                elif mode == "flaky" and seen <= int(query.get("fail", ["2"])[0]):
                    status = 503
                elif mode == "429s" and seen == 1:
                    status, headers = 429, {"Retry-After": "1"}
                elif mode == "429date" and seen == 1:
                    now = time.time()
                    headers = {
                        "Retry-After": formatdate(now + 1, usegmt=True),
                        "Date": formatdate(now, usegmt=True),
                    }
                    status = 429
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            # socketserver's default listen backlog is 5: with dozens of connections opening at
            # once the kernel drops SYNs, and clients retry them a whole second later.
            request_queue_size = 256

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def called_per_task(self) -> Counter[str]:
        return Counter(call.task for call in self.snapshot())


class Workers:
    """`ratedispatch worker` processes with one environment, their logs in files."""

    def __init__(self, logdir: Path, env: dict[str, str]) -> None:
        self.logdir = logdir
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int, **extra_env: str) -> None:
        """Start `count` workers, with `extra_env` added to their environment."""
        for _ in range(count):
            n = len(self.processes)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("RATEDISPATCH_")},
                **self.env,
                "RATEDISPATCH_CONSUMER": f"worker-{n}",
                **extra_env,
            }
            log = open(self.logdir / f"worker-{n}.log", "wb")  # noqa: SIM115 - closed with the process
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ratedispatch", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.logdir,
                )
            )

    def log(self, n: int) -> str:
        return (self.logdir / f"worker-{n}.log").read_text(errors="replace")

    def alive(self) -> list[int]:
        return [n for n, p in enumerate(self.processes) if p.poll() is None]

    def kill(self, n: int) -> None:
        self.processes[n].send_signal(signal.SIGKILL)
        self.processes[n].wait(10)

    def terminate_all(self, timeout: float = 20.0) -> list[int | None]:
        """SIGTERM every live worker; their exit codes (None: did not exit in time)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(None)
        return codes


@contextmanager
def workers(logdir: Path, env: dict[str, str], count: int) -> Iterator[Workers]:
    pool = Workers(logdir, env)
    pool.start(count)
    try:
        yield pool
    finally:
        for process in pool.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it is true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
