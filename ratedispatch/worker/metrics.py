"""Prometheus metrics and `/healthz`, on METRICS_PORT.

Events (calls, slots, dead letters, ...) are counted where they happen; the gauges that
describe the whole queue are read from Redis every few seconds (`refresh`)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..ops.status import Status

CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


def status_class(http_status: int | None) -> str:
    return "error" if http_status is None else f"{http_status // 100}xx"


class Metrics:
    """One registry per worker: no module-level state, so tests can make as many as they like."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "ratedispatch_calls", "HTTP calls made, by outcome and status class",
            ["outcome", "status_class"], registry=r,
        )  # fmt: skip
        self.slots_granted = Counter("ratedispatch_slots_granted", "Window slots taken", registry=r)
        self.slots_refused = Counter(
            "ratedispatch_slots_refused", "Times a worker found the window full", registry=r
        )
        self.dead_letters = Counter(
            "ratedispatch_dead_lettered", "Tasks dead-lettered, by reason", ["reason"], registry=r
        )
        self.reclaimed = Counter(
            "ratedispatch_reclaimed", "Tasks taken over from workers that stopped answering",
            registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "ratedispatch_retries", "Failed attempts scheduled to be tried again", registry=r
        )
        self.call_seconds = Histogram(
            "ratedispatch_call_duration_seconds", "Duration of HTTP calls",
            buckets=CALL_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "ratedispatch_queue_wait_seconds",
            "From a task's entry id time to the start of its first call",
            buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("ratedispatch_in_flight", "Calls in flight", registry=r)
        self.stream_length = Gauge(
            "ratedispatch_stream_length", "Entries in the task stream", registry=r
        )
        self.backlog = Gauge(
            "ratedispatch_backlog", "Entries not yet delivered to the group (lag)", registry=r
        )
        self.pending = Gauge(
            "ratedispatch_pending", "Entries delivered and not yet acknowledged", registry=r
        )
        self.waiting = Gauge(
            "ratedispatch_waiting", "Tasks waiting for a slot, by priority", ["priority"],
            registry=r,
        )  # fmt: skip
        self.retrying = Gauge("ratedispatch_retrying", "Tasks waiting out a backoff", registry=r)
        self.dead_letter_length = Gauge(
            "ratedispatch_dead_letter_stream_length", "Entries in the dead-letter stream",
            registry=r,
        )  # fmt: skip
        self.window_used = Gauge(
            "ratedispatch_window_used", "Slots taken in the current window", registry=r
        )
        self.slots_busy = Gauge(
            "ratedispatch_slots_busy",
            "The first limit term's busy units: in flight, or answered less than its D ago",
            registry=r,
        )
        self.term_used = Gauge(
            "ratedispatch_limit_used",
            "Units busy in each limit term (a paced term: its bucket's level; max_in_flight: "
            "calls in flight across the fleet)",
            ["term"], registry=r,
        )  # fmt: skip
        self.term_limit = Gauge(
            "ratedispatch_limit", "Each limit term's N (a paced term: its burst B)", ["term"],
            registry=r,
        )  # fmt: skip
        self.term_frees_in = Gauge(
            "ratedispatch_limit_frees_in_seconds",
            "Seconds until each limit term's next busy unit frees (0: none is busy)",
            ["term"], registry=r,
        )  # fmt: skip
        self.window_limit = Gauge(
            "ratedispatch_window_limit", "Units per window of the first term (N)", registry=r
        )
        # With RATEDISPATCH_CONFIG, every API's own: labelled by API (and term, or priority),
        # never by anything that has one value per task or tenant.
        self.api_waiting = Gauge(
            "ratedispatch_api_waiting", "Tasks waiting for a slot, by API and priority",
            ["api", "priority"], registry=r,
        )  # fmt: skip
        self.api_retrying = Gauge(
            "ratedispatch_api_retrying", "Tasks waiting out a backoff, by API", ["api"],
            registry=r,
        )  # fmt: skip
        self.api_term_used = Gauge(
            "ratedispatch_api_limit_used", "Units busy in each limit term of each API",
            ["api", "term"], registry=r,
        )  # fmt: skip
        self.api_term_limit = Gauge(
            "ratedispatch_api_limit", "Each limit term's N (a paced term: B), by API",
            ["api", "term"], registry=r,
        )  # fmt: skip
        self.api_term_frees_in = Gauge(
            "ratedispatch_api_limit_frees_in_seconds",
            "Seconds until each API's limit term's next busy unit frees (0: none is busy)",
            ["api", "term"], registry=r,
        )  # fmt: skip

        self.credential_term_used = Gauge(
            "ratedispatch_credential_limit_used",
            "Units busy in each limit term of each credential of an API's pool (tokens_env)",
            ["api", "credential", "term"], registry=r,
        )  # fmt: skip
        # By API only: one label value per key would grow without bound.
        self.rate_headers_ignored = Counter(
            "ratedispatch_rate_headers_ignored",
            "Rate-limit headers an API sent that were malformed or absurd, so ignored",
            ["api", "header"], registry=r,
        )  # fmt: skip
        # What the API said of its limits (RATE_HEADERS), by API (pool credentials: the first).
        self.api_remaining = Gauge(
            "ratedispatch_announced_remaining", "Calls the API said remain before its reset",
            ["api"], registry=r,
        )  # fmt: skip
        self.api_reset = Gauge(
            "ratedispatch_announced_reset_seconds", "Seconds until the API said its calls are back",
            ["api"], registry=r,
        )  # fmt: skip
        self.api_limit = Gauge(
            "ratedispatch_announced_limit", "The quota the API stated, calls per its window",
            ["api"], registry=r,
        )  # fmt: skip
        self.adapt_factor = Gauge(
            "ratedispatch_adapt_factor",
            "RATE_ADAPT's factor on every term of LIMITS (1: not lowered)", ["api"], registry=r,
        )  # fmt: skip
        self.keys_waiting = Gauge(
            "ratedispatch_keys_waiting", "Keys with tasks waiting for a slot, by API", ["api"],
            registry=r,
        )  # fmt: skip
        self.keys_without_room = Gauge(
            "ratedispatch_keys_without_room",
            "Keys with tasks waiting whose own key_limits have no room, by API", ["api"],
            registry=r,
        )  # fmt: skip

    def call(self, outcome: str, http_status: int | None, seconds: float) -> None:
        self.calls.labels(outcome, status_class(http_status)).inc()
        self.call_seconds.observe(seconds)

    def refresh(self, status: Status) -> None:
        self.stream_length.set(status.stream_length)
        self.backlog.set(status.not_delivered or 0)
        self.pending.set(status.pending)
        for priority, count in status.waiting.items():
            self.waiting.labels(priority).set(count)
        self.retrying.set(status.retrying)
        self.dead_letter_length.set(status.dead_letters)
        self.window_used.set(status.window_used)
        self.window_limit.set(status.window_limit)
        self.slots_busy.set(status.slots_busy)
        for term in status.terms:
            self.term_used.labels(term.term).set(term.used)
            self.term_limit.labels(term.term).set(term.limit)
            self.term_frees_in.labels(term.term).set(term.frees_in or 0.0)
        keyed = [(api.name, api.keys) for api in status.apis] or [("default", status.keys)]
        for name, keys in keyed:
            if keys is not None:
                self.keys_waiting.labels(name).set(keys.waiting)
                self.keys_without_room.labels(name).set(keys.without_room)
        announced = [(api.name, api.announced) for api in status.apis] or [
            ("default", status.announced)
        ]
        for name, said in announced:
            # A value the API has not said (or no longer holds) is not shown as 0.
            for gauge, value in (
                (self.api_remaining, said.api_remaining),
                (self.api_reset, said.api_reset_in),
                (self.api_limit, said.api_limit),
                (self.adapt_factor, said.adapt_factor),
            ):
                if value is None:
                    with contextlib.suppress(KeyError):
                        gauge.remove(name)
                else:
                    gauge.labels(name).set(value)
        for api in status.apis:
            for credential in api.credentials:
                for term in credential.terms:
                    labels = (api.name, credential.variable, term.term)
                    self.credential_term_used.labels(*labels).set(term.used)
            for priority, count in api.waiting.items():
                self.api_waiting.labels(api.name, priority).set(count)
            self.api_retrying.labels(api.name).set(api.retrying)
            for term in api.terms:
                self.api_term_used.labels(api.name, term.term).set(term.used)
                self.api_term_limit.labels(api.name, term.term).set(term.limit)
                self.api_term_frees_in.labels(api.name, term.term).set(term.frees_in or 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """`GET /metrics` and `GET /healthz` on a small threaded HTTP server; nothing else.

    It runs in a thread so that a scrape never waits on the worker's event loop.
    """

    def __init__(self, metrics: Metrics, healthy: Callable[[], tuple[bool, str]], port: int,
                 host: str = "0.0.0.0") -> None:  # fmt: skip
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok, detail = healthy()
                    body = json.dumps({"ok": ok, "detail": detail}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a scrape is not an event

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
