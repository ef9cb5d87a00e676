"""The benchmark suite's smoke run (seconds): every scenario runs end to end on real processes,
the table and the picture are written. Figures are not asserted here: speed is measured by the
full run (`python -m benchmarks`), never in a test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.e2e


def smoke_table(name: str, out: Path, *args: str) -> list[list[str]]:
    """Run `python -m benchmarks.<name> --smoke` into `out`; the cells of its table's rows."""
    run = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke", *args, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return [
        line.split(" | ")
        for line in (out / f"{name}.md").read_text().splitlines()
        if re.match(r"\| (?!figure|---)", line)
    ]


def test_the_benchmark_suite_runs_and_writes_its_table_and_picture(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = (tmp_path / "results.md").read_text()
    rows = [line for line in results.splitlines() if re.match(r"\| (?!figure|---)", line)]
    names = [row.split(" | ")[0] for row in rows]
    for expected in ("throughput ÷ bare", "throughput, 400 tasks", "max calls in any",
                     "total time ÷ ideal", "high task behind", "p50", "p99", "peak RSS",
                     "Redis commands per task", "worker CPU per task"):  # fmt: skip
        assert any(expected in name for name in names), (expected, names)
    for row in rows:  # every figure was measured: a number in the "measured" column
        measured = row.split(" | ")[2]
        assert re.fullmatch(r"[\d,]+(\.\d+)?", measured), row
    assert "`aiohttp`: bare loop" in results and "`httpx`: bare loop" in results
    picture = (tmp_path / "quota.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 10_000


def test_the_limit_terms_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    rows = smoke_table("terms", tmp_path)
    names = " ".join(row[0] for row in rows)
    for expected in ("two terms", "paced", "plain", "MAX_IN_FLIGHT", "three terms"):
        assert expected in names, (expected, names)
    for row in rows:  # every figure was measured
        # A count, a count of a total, or a median with its lowest and highest.
        assert re.fullmatch(r"[\d,]+(\.\d+)?( of [\d,]+| \([\d.]+, [\d.]+\))? \|", row[2]), row


def test_the_many_apis_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    rows = smoke_table("apis", tmp_path, "--repeats", "1")
    assert len(rows) == 3
    assert "alone" in rows[0][0] and "beside" in rows[1][0] and "beside ÷ alone" in rows[2][0]
    for row in rows:  # every figure was measured
        assert re.fullmatch(r"[\d.]+( \([\d.]+, [\d.]+\))? \|", row[2]), row


def test_the_many_tenants_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    rows = smoke_table("keys", tmp_path, "--baseline")
    names = " ".join(row[0] for row in rows)
    expected_rows = ("fairness", "small tasks called", "the big key meanwhile",
                     "without a key_field", "take cost, 1 key ", "take cost, 100 keys",
                     "Redis memory, 100 keys")  # fmt: skip
    for expected in expected_rows:
        assert expected in names, (expected, names)
    for row in rows:  # every figure was measured
        assert re.match(r"-?[\d.,]+", row[2]), row


def test_the_headers_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    rows = smoke_table("headers", tmp_path)
    names = " ".join(row[0] for row in rows)
    for expected in ("announced X-RateLimit", "switched", "adapt", "successes per second"):
        assert expected in names, (expected, names)
    for row in rows:  # every figure was measured: it starts with a number
        assert re.match(r"[\d.]+", row[2]), row
