"""The summary table printed at the end of ``pytest benchmarks/ --benchmark-only``.

Each benchmark calls :func:`report` after it ran; ``benchmarks/conftest.py`` prints every row
at the end of the session: µs per record, records per second, the ratio to the hand-written
loop, peak memory (tracemalloc, one extra untimed run) and memory per active window key.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
HAND_LOOP = "seed rules: hand-written loop"
HAND_LOOP_TWENTY = "20 rules: hand-written loop"


@dataclass
class Row:
    name: str
    us_per_record: float
    records_per_s: float
    peak_bytes: int | None = None
    bytes_per_key: float | None = None
    note: str = ""
    timed: bool = True  # False: a memory measurement (tracemalloc slows the run)
    baseline: str | None = None  # the row it is compared with (same records, same rules)
    ratio: float | None = None  # measured by the benchmark itself (then no baseline)


ROWS: list[Row] = []


def report(
    benchmark: Any,
    name: str,
    records: int,
    *,
    seconds: float | None = None,
    peak_bytes: int | None = None,
    bytes_per_key: float | None = None,
    note: str = "",
    timed: bool = True,
    compare: bool = True,
    baseline: str | None = None,
    ratio: float | None = None,
) -> Row:
    """Add a row for ``records`` processed in ``seconds`` (default: the benchmark's mean round).

    ``compare``: give the ratio to ``baseline`` (default: the hand-written loop); only rows
    over the same records and rules should (the others say ``compare=False``). ``ratio``: a
    ratio the benchmark measured itself, shown instead."""
    if seconds is None:
        seconds = benchmark.stats.stats.mean
    row = Row(
        name,
        seconds / records * 1e6,
        records / seconds,
        peak_bytes,
        bytes_per_key,
        note,
        timed,
        (baseline or HAND_LOOP) if compare and timed and ratio is None else None,
        ratio,
    )
    benchmark.extra_info["us_per_record"] = round(row.us_per_record, 3)
    benchmark.extra_info["records_per_s"] = round(row.records_per_s)
    if peak_bytes is not None:
        benchmark.extra_info["peak_mb"] = round(peak_bytes / 2**20, 1)
    if bytes_per_key is not None:
        benchmark.extra_info["bytes_per_key"] = round(bytes_per_key)
    if note:
        benchmark.extra_info["note"] = note
    ROWS[:] = [r for r in ROWS if r.name != name] + [row]
    return row


def peak_memory(run: Callable[[], T]) -> tuple[T, int]:
    """Run once under tracemalloc: the result and the peak bytes allocated during the run."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = run()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak


def table(rows: list[Row] | None = None) -> str:
    rows = ROWS if rows is None else rows
    by_name = {r.name: r for r in rows}
    header = ("benchmark", "µs/record", "records/s", "x hand loop", "peak MB", "B/window key")
    lines = [header]
    for r in rows:
        base = by_name.get(r.baseline) if r.baseline else None
        if r.ratio is not None:
            ratio = f"{r.ratio:.2f}"
        else:
            ratio = f"{r.us_per_record / base.us_per_record:.2f}" if base else "-"
        lines.append(
            (
                r.name + (f" ({r.note})" if r.note else ""),
                f"{r.us_per_record:.3f}" if r.timed else "-",
                f"{r.records_per_s:,.0f}" if r.timed else "-",
                ratio,
                "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:,.1f}",
                "-" if r.bytes_per_key is None else f"{r.bytes_per_key:,.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
