"""Operator commands at scale: `dead list`, `dead requeue` and `dead purge` over many letters.

    python -m benchmarks.dead_letters [--letters 1000000] [--redis-url URL] [--code DIR]

Fills a redis-server of its own (or the one at --redis-url, under keys of its own) with dead
letters by pipelined XADDs, then runs each command as an operator would: the real CLI in a
subprocess. For each, the wall time and the subprocess's peak RSS (wait4's rusage of that child).
`purge --older-than` runs on a pseudo-terminal and answers the confirmation, so the count it asks
about and the progress bar are part of what is timed. `--code DIR` runs the CLI from another
checkout (e.g. `git archive HEAD | tar -x -C DIR`), for a before/after on the same machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis as redis_sync

from tests.redis_server import RedisServer

STREAM = "bench:dead-letters:tasks:stream"
DEAD = "bench:dead-letters:tasks:dead:stream"
# Letters written in 2020: every one is older than `--older-than 7d`.
OLD_MS = 1_600_000_000_000
FILL_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Run:
    command: str
    seconds: float
    peak_rss_mb: float
    last_line: str  # the command's own last line of stdout (its summary)
    lines: int  # how many lines it printed on stdout


def letter(n: int) -> dict[str, str]:
    """A dead letter as bury.lua writes it, of a typical size (about 300 bytes)."""
    return {
        "endpoint": f"/users/{n}/profile", "method": "GET", "priority": "normal",
        "user_id": str(n), "original_id": f"{OLD_MS + n // 1000}-{n % 1000}",
        "reason": "the API answered 404 Not Found: the resource does not exist; fix the task "
                  "and requeue it",
        "attempts": "1", "last_status": "404", "failed_at": str(OLD_MS + n // 1000),
    }  # fmt: skip


def fill(client: redis_sync.Redis, letters: int) -> float:
    """Write `letters` dead letters with ids in 2020; returns the seconds it took."""
    client.delete(DEAD, STREAM)
    started = time.monotonic()
    for first in range(0, letters, FILL_BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(first, min(first + FILL_BATCH, letters)):
            pipe.xadd(DEAD, letter(n), id=f"{OLD_MS + n // 1000}-{n % 1000}")  # type: ignore[arg-type]
        pipe.execute()
    return time.monotonic() - started


def environment(url: str, code: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEDISPATCH_")}
    env.update(
        RATEDISPATCH_REDIS_URL=url,
        RATEDISPATCH_STREAM=STREAM,
        RATEDISPATCH_DEAD_LETTER_STREAM=DEAD,
    )
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return env


def _reap(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for the child; its exit code and its own peak RSS in MB (Linux: ru_maxrss in KiB)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024


def run(args: Sequence[str], env: dict[str, str], workdir: Path, stdout: Path | None) -> Run:
    """The CLI with stdout to a file (or /dev/null) and stderr to a pipe: not a terminal."""
    command = [sys.executable, "-m", "ratedispatch", *args]
    out = stdout.open("wb") if stdout is not None else open(os.devnull, "wb")  # noqa: SIM115
    with out:
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.PIPE, env=env, cwd=workdir
        )
        assert process.stderr is not None
        err = process.stderr.read()
        code, rss = _reap(process)
        seconds = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited {code}: {err.decode(errors='replace')}")
    return _result(" ".join(args), seconds, rss, stdout)


def run_on_terminal(args: Sequence[str], env: dict[str, str], workdir: Path) -> Run:
    """The CLI with stdin and stderr on a pseudo-terminal (it draws its bar and asks), stdout
    to a file; answers `y` to the confirmation question."""
    command = [sys.executable, "-m", "ratedispatch", *args]
    master, slave = os.openpty()
    stdout = workdir / "stdout.txt"
    with stdout.open("wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(command, stdin=slave, stdout=out, stderr=slave, env=env,
                                   cwd=workdir)  # fmt: skip
        os.close(slave)
        # The answer waits in the terminal's input until the question (on stdout) reads it.
        os.write(master, b"y\n")
        while True:  # read everything the child writes, or it blocks on a full terminal
            try:
                if not os.read(master, 65536):
                    break
            except OSError:  # EIO: the child has closed the terminal
                break
        os.close(master)
        code, rss = _reap(process)
        seconds = time.monotonic() - started
    asked = "[y/N]" in stdout.read_text(errors="replace")
    if code != 0 or not asked:
        raise RuntimeError(f"{' '.join(args)} exited {code}, asked: {asked}")
    return _result(" ".join(args) + " (on a terminal, answers y)", seconds, rss, stdout)


def _result(command: str, seconds: float, rss: float, stdout: Path | None) -> Run:
    if stdout is None:
        return Run(command, seconds, rss, "(to /dev/null)", 0)
    lines, last = 0, ""
    with stdout.open("rb") as text:
        for line in text:
            lines += 1
            last = line.decode(errors="replace").strip()
    return Run(command, seconds, rss, last, lines)


def measure(client: redis_sync.Redis, url: str, letters: int, code: Path | None) -> list[str]:
    env = environment(url, code)
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-dead-") as tmp:
        workdir = Path(tmp)
        run(["dead", "list", "--help"], env, workdir, workdir / "help.txt")
        has_all = "--all" in (workdir / "help.txt").read_text()
        every = ["--all"] if has_all else ["--count", str(letters)]  # the code before --all

        filled = fill(client, letters)
        memory = int(client.info("memory")["used_memory"]) / 2**20
        report.append(
            f"{letters:,} dead letters: filled in {filled:.1f} s, Redis used_memory {memory:.0f} MB"
        )
        runs = [
            run(["dead", "list", *every], env, workdir, None),
            run(["dead", "list", *every, "--json"], env, workdir, None),
            run(["dead", "requeue", "--all"], env, workdir, workdir / "requeue.txt"),
        ]
        assert client.xlen(DEAD) == 0 and client.xlen(STREAM) == letters, "requeue incomplete"
        fill(client, letters)
        runs.append(run_on_terminal(["dead", "purge", "--older-than", "7d"], env, workdir))
        assert client.xlen(DEAD) == 0, "purge --older-than incomplete"
        fill(client, letters)
        runs.append(run(["dead", "purge", "--yes"], env, workdir, workdir / "purge.txt"))
        assert client.xlen(DEAD) == 0, "purge incomplete"
        client.delete(DEAD, STREAM)
    width = max(len(r.command) for r in runs)
    report.append(f"{'command'.ljust(width)}  {'wall s':>7}  {'peak RSS MB':>11}  stdout")
    for r in runs:
        said = f"{r.lines:,} lines, the last: {r.last_line}" if r.lines else r.last_line
        report.append(f"{r.command.ljust(width)}  {r.seconds:7.1f}  {r.peak_rss_mb:11.0f}  {said}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dead_letters")
    parser.add_argument("--letters", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--redis-url", help="a Redis to use (keys bench:dead-letters:*)")
    parser.add_argument("--code", type=Path, help="run the CLI from this checkout instead")
    args = parser.parse_args(argv)
    if args.letters < 1:
        parser.error("--letters must be at least 1")
    if args.redis_url:
        client = redis_sync.Redis.from_url(args.redis_url)
        print("\n".join(measure(client, args.redis_url, args.letters, args.code)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            client = redis_sync.Redis.from_url(server.url)
            print("\n".join(measure(client, server.url, args.letters, args.code)))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
