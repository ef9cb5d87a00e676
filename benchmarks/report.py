"""The results table (benchmarks/results.md), the tables of the other benchmarks, and the picture
of the quota run's windows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from ratedispatch.devtools.audit import Call


@dataclass(frozen=True)
class Figure:
    name: str
    target: str
    value: float
    shown: str  # the value as the table shows it
    met: bool | None  # None: for reference only


def at_least(bound: float) -> Callable[[float], bool]:
    return lambda v: v >= bound


def at_most(bound: float) -> Callable[[float], bool]:
    return lambda v: v <= bound


def figure(
    name: str, target: str, value: float, fmt: str, check: Callable[[float], bool] | None
) -> Figure:
    return Figure(name, target, value, format(value, fmt), None if check is None else check(value))


def write_results(
    path: Path, figures: Sequence[Figure], notes: Sequence[str], machine: str, command: str
) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine}.",
        f"Command: `{command}`. Every figure is the median of the repeats; speed is also given",
        "as a ratio to the bare client loop measured in the same run.",
        "",
        "| figure | target | measured | met |",
        "| --- | --- | --- | --- |",
    ]
    for f in figures:
        met = "—" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.name} | {f.target} | {f.shown} | {met} |")
    lines += ["", *notes, "", "![calls per 100 ms in the quota run](quota.png)", ""]
    path.write_text("\n".join(lines))


def spread(values: Sequence[float], spec: str) -> str:
    """The median of `values`, and their lowest and highest."""
    low, high = min(values), max(values)
    return f"{median(values):{spec}} ({low:{spec}}, {high:{spec}})"


def write_table(path: Path, title: str, command: str, rows: Sequence[tuple[str, str, str]]) -> str:
    """A benchmark's (figure, target, measured) rows as a Markdown table under its title and the
    command that measured them, written to `path`; returns the text."""
    table = ["| figure | target | measured |", "| --- | --- | --- |"]
    table += [f"| {name} | {target} | {measured} |" for name, target, measured in rows]
    text = f"# {title}\n\n`{command}`\n\n" + "\n".join(table) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def trailing_counts(times: Sequence[float], length: float) -> list[int]:
    """For each time (sorted), the calls in the half-open interval of `length` ending with it."""
    counts, start = [], 0
    for end, t in enumerate(times):
        while t - times[start] >= length:
            start += 1
        counts.append(end - start + 1)
    return counts


def plot_quota(path: Path, calls: Sequence[Call], limit: int, window: float) -> None:
    """Calls per 100 ms over time, and the calls in the trailing window against the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not calls:
        raise ValueError("no calls to plot")
    t0 = calls[0].at
    times = [c.at - t0 for c in calls]
    bin_width = 0.1
    bins = int(times[-1] / bin_width) + 1
    per_bin = [0] * bins
    for t in times:
        per_bin[int(t / bin_width)] += 1
    trailing = trailing_counts(times, window)
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    ax.bar([i * bin_width for i in range(bins)], per_bin, width=bin_width, align="edge",
           color="#4C72B0", label="calls per 100 ms")  # fmt: skip
    ax.step(times, trailing, where="post", color="#DD8452", linewidth=1.2,
            label=f"calls in the trailing {window:g} s")  # fmt: skip
    ax.axhline(limit, color="#C44E52", linestyle="--", linewidth=1.2,
               label=f"limit: {limit} per {window:g} s window")  # fmt: skip
    ax.set_xlabel("seconds since the first call (as the API saw them)")
    ax.set_ylabel("calls")
    ax.set_title(f"Quota run: {len(calls)} calls, limit {limit} per {window:g} s")
    ax.set_ylim(0, limit * 1.25)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
