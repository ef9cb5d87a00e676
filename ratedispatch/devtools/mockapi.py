"""A stand-in for the external API, for trying ratedispatch locally (`config/compose.yaml`) and the
independent observer of every call in the soak run and the benchmarks.

    python -m ratedispatch.mockapi --port 8080 [--latency 0.02] [--fail-rate 0.05] [--log FILE]
                                   [--quota N/SECONDS [--announce x-ratelimit|draft]
                                    [--switch N/SECONDS@AFTER] [--bare]]

Answers every request with 200 and a small JSON body (or 503 at `--fail-rate`), and prints the
calls it received in each second, so the limit can be seen holding from the API's side.
`--quota 20/2` enforces a quota of its own, as a real API does: N calls in each fixed window of
SECONDS (windows of the wall clock, from the epoch), 429 with `Retry-After` beyond; `--announce`
says where a client stands on every answer, in `X-RateLimit-Limit/-Remaining/-Reset` (the reset
as epoch seconds, as GitHub sends it) or in the IETF draft's `RateLimit-Policy` and `RateLimit`.
`--switch 10/2@6` changes the quota to 10 per 2 s 6 s after the first call, as a plan downgrade
or a provider's incident would. `--bare` answers 429 with no header at all, not even
`Retry-After`, as some APIs do.
`--log` writes one line per call when the server stops (SIGTERM or SIGINT): its arrival time
(CLOCK_MONOTONIC seconds, comparable across the processes of one machine), the Idempotency-Key,
the `prio` query parameter and the status answered. SIGUSR1 starts a 3-second storm of 503s.

One asyncio loop, HTTP/1.1 with keep-alive, and calls recorded in memory: an observer that
writes to disk per call, or has a thread per connection, stalls under load and records calls
late, which moves them into the wrong window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# A request head larger than this is refused: the mock has no reason to buffer more.
MAX_HEAD_BYTES = 65_536
REASONS = {200: "OK", 429: "Too Many Requests", 503: "Service Unavailable"}
STORM_SECONDS = 3.0


ANNOUNCE = ("none", "x-ratelimit", "draft")


class Quota:
    """The API's own quota: `count` calls in each fixed window of `seconds` of the wall clock,
    counted from the epoch (so a window of whole seconds resets on a whole second, and an
    epoch reset says exactly when)."""

    def __init__(
        self,
        count: int,
        seconds: float,
        announce: str = "none",
        switch: tuple[int, float, float] | None = None,
        bare: bool = False,
    ) -> None:
        """`switch`: (count, seconds, after): the quota it changes to, `after` seconds from the
        first call; `bare`: a 429 says nothing, not even Retry-After."""
        self.count, self.seconds, self.announce = count, seconds, announce
        self.bare = bare
        self._switch = switch
        self._first: float | None = None
        self._window, self._used = -1, 0

    def admit(self, at: float) -> tuple[bool, list[tuple[str, str]]]:
        """Whether the call at `at` (epoch seconds) fits, and the headers that say where the
        client stands."""
        if self._first is None:
            self._first = at
        if self._switch is not None and at >= self._first + self._switch[2]:
            self.count, self.seconds, _ = self._switch
            self._switch = None
        window = int(at // self.seconds)
        if window != self._window:
            self._window, self._used = window, 0
        admitted = self._used < self.count
        self._used += admitted
        reset_at = (window + 1) * self.seconds
        reset = reset_at - at
        remaining = self.count - self._used
        headers = [] if admitted or self.bare else [("Retry-After", str(math.ceil(reset)))]
        if self.announce == "x-ratelimit":
            headers += [
                ("X-RateLimit-Limit", str(self.count)),
                ("X-RateLimit-Remaining", str(remaining)),
                ("X-RateLimit-Reset", str(math.ceil(reset_at))),
            ]
        elif self.announce == "draft":
            headers += [
                ("RateLimit-Policy", f'"quota";q={self.count};w={self.seconds:g}'),
                ("RateLimit", f'"quota";r={remaining};t={math.ceil(reset)}'),
            ]
        return admitted, headers


class Recorder:
    """The calls seen: (arrival, idempotency key, prio, status), kept in memory."""

    def __init__(
        self, latency: float, fail_rate: float, seed: int | None = None, quota: Quota | None = None
    ) -> None:
        self.latency = latency
        self.fail_rate = fail_rate
        self.quota = quota
        self.storm_until = 0.0
        self.calls: list[tuple[float, str, str, int]] = []
        self._rng = random.Random(seed)

    def answer(self, at: float, key: str, prio: str) -> int:
        return self.respond(at, key, prio)[0]

    def respond(self, at: float, key: str, prio: str) -> tuple[int, list[tuple[str, str]]]:
        """The status of the call arriving at `at`, and the headers to answer with."""
        failed = at < self.storm_until or (
            self.fail_rate > 0 and self._rng.random() < self.fail_rate
        )
        status, headers = (503 if failed else 200), list[tuple[str, str]]()
        if self.quota is not None and not failed:
            admitted, headers = self.quota.admit(time.time())
            status = 200 if admitted else 429
        self.calls.append((at, key, prio, status))
        return status, headers

    def storm(self) -> None:
        self.storm_until = time.monotonic() + STORM_SECONDS

    def write(self, path: Path) -> None:
        lines = [f"{at:.6f} {key} {prio} {status}\n" for at, key, prio, status in self.calls]
        path.write_text("".join(lines))


class _Connection(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        at = time.monotonic()
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._close()
                return
            head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                self._close()
                return
            if len(self._buffer) < end + 4 + length:
                return  # the body is still on its way
            del self._buffer[: end + 4 + length]
            parts = head[0].split(" ")
            target = parts[1] if len(parts) > 1 else "/"
            prio = parse_qs(urlsplit(target).query).get("prio", [""])[0]
            status, extra = self._recorder.respond(at, headers.get("idempotency-key", ""), prio)
            body = json.dumps({"ok": status == 200, "path": target}).encode()
            lines = "".join(f"{name}: {value}\r\n" for name, value in extra)
            response = (
                f"HTTP/1.1 {status} {REASONS[status]}\r\n{lines}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            if self._recorder.latency:
                self._loop.call_later(self._recorder.latency, self._send, response)
            else:
                self._send(response)

    def _send(self, response: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(response)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve(
    host: str,
    port: int,
    recorder: Recorder,
    *,
    stop: asyncio.Event,
    report: bool = True,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set; with `report`, print the calls received in each second."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(recorder), host, port, backlog=1024, reuse_address=True
    )
    print(f"mockapi: listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    if ready is not None:
        ready.set()
    seen = 0
    async with server:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                if report:
                    total = len(recorder.calls)
                    print(f"mockapi: {total - seen} calls in the last second, {total} in all",
                          flush=True)  # fmt: skip
                    seen = total


def _quota(parser: argparse.ArgumentParser, option: str, text: str) -> tuple[int, float]:
    count, _, seconds = text.partition("/")
    try:
        quota = int(count), float(seconds)
    except ValueError:
        parser.error(f"{option} {text!r}: expected N/SECONDS, e.g. 20/2")
    if quota[0] < 1 or not quota[1] > 0:
        parser.error(f"{option} {text!r}: N must be at least 1 and SECONDS above 0")
    return quota


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ratedispatch.mockapi")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of 503 answers")
    parser.add_argument("--log", help="write one line per call to this file when stopped")
    parser.add_argument("--quiet", action="store_true", help="no per-second report")
    parser.add_argument("--quota", metavar="N/SECONDS",
                        help="enforce N calls per fixed window of SECONDS, 429 beyond")  # fmt: skip
    parser.add_argument("--announce", choices=ANNOUNCE, default="none",
                        help="with --quota: say where a client stands on every answer")  # fmt: skip
    parser.add_argument("--switch", metavar="N/SECONDS@AFTER",
                        help="with --quota: change to this quota AFTER seconds from the first "
                             "call")  # fmt: skip
    parser.add_argument("--bare", action="store_true",
                        help="with --quota: 429 without Retry-After")  # fmt: skip
    args = parser.parse_args(argv)
    if args.latency < 0 or not 0 <= args.fail_rate <= 1:
        parser.error("--latency must be >= 0 and --fail-rate between 0 and 1")
    quota = None
    if args.quota is not None:
        count, seconds = _quota(parser, "--quota", args.quota)
        switch = None
        if args.switch is not None:
            text, at, after = args.switch.rpartition("@")
            try:
                if not at:
                    raise ValueError(args.switch)
                switch = (*_quota(parser, "--switch", text), float(after))
            except ValueError:
                parser.error(f"--switch {args.switch!r}: expected N/SECONDS@AFTER, e.g. 10/2@6")
        quota = Quota(count, seconds, args.announce, switch, args.bare)
    elif args.announce != "none" or args.switch is not None or args.bare:
        parser.error("--announce, --switch and --bare need --quota: there is no quota without one")
    recorder = Recorder(args.latency, args.fail_rate, quota=quota)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, recorder.storm)
        await serve(args.host, args.port, recorder, stop=stop, report=not args.quiet)

    asyncio.run(run())
    if args.log:
        recorder.write(Path(args.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
