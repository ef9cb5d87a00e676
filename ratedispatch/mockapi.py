"""A stand-in for the external API, for trying ratedispatch locally (`config/compose.yaml`).

    python -m ratedispatch.mockapi --port 8080 [--latency 0.02] [--fail-rate 0.05] [--log FILE]

Answers every request with 200 and a small JSON body (or 503 at `--fail-rate`), and prints the
calls it received in each second, so the limit can be seen holding from the API's side.
`--log` appends one line per call: its arrival time (CLOCK_MONOTONIC seconds, comparable across
the processes of one machine), the Idempotency-Key, the `prio` query parameter and the status
answered. SIGUSR1 starts a 3-second storm of 503s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO
from urllib.parse import parse_qs, urlsplit


class MockApi(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs when many workers connect at once

    def __init__(
        self,
        port: int,
        latency: float,
        fail_rate: float,
        host: str = "0.0.0.0",
        log: TextIO | None = None,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.latency = latency
        self.fail_rate = fail_rate
        self.lock = threading.Lock()
        self.calls_this_second = 0
        self.total = 0
        self.log = log
        self.storm_until = 0.0

    def report_every_second(self) -> None:
        while True:
            time.sleep(1.0)
            with self.lock:
                calls, self.calls_this_second = self.calls_this_second, 0
                total = self.total
            print(f"mockapi: {calls} calls in the last second, {total} in all", flush=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MockApi

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        now = time.monotonic()
        with self.server.lock:
            self.server.calls_this_second += 1
            self.server.total += 1
        if self.server.latency:
            time.sleep(self.server.latency)
        failed = now < self.server.storm_until or random.random() < self.server.fail_rate
        if self.server.log is not None:
            key = self.headers.get("Idempotency-Key", "")
            prio = parse_qs(urlsplit(self.path).query).get("prio", [""])[0]
            with self.server.lock:
                self.server.log.write(f"{now:.6f} {key} {prio} {503 if failed else 200}\n")
        body = json.dumps({"ok": not failed, "path": self.path}).encode()
        self.send_response(503 if failed else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ratedispatch.mockapi")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of 503 answers")
    parser.add_argument("--log", help="append one line per call to this file")
    args = parser.parse_args(argv)
    log = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115
    server = MockApi(args.port, args.latency, args.fail_rate, args.host, log)

    def storm(signum: int, frame: object) -> None:
        server.storm_until = time.monotonic() + 3.0

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGUSR1, storm)
    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=server.report_every_second, daemon=True).start()
    print(f"mockapi: listening on {args.host}:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    if log is not None:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
