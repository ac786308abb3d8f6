"""Shared benchmark data and the summary table.

The data set (``benchmarks/dataset.py``) is generated once and cached under ``.cache/bench``;
``STREAMPROC_BENCH_RECORDS=100000`` runs everything on a smaller one.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import dataset
from benchmarks.summary import ROWS, table
from streamproc.emulators import MotoServer, start_moto
from streamproc.records import Record

BATCH = 1_000  # records per processor call, like one GetRecords/processRecords batch

_SHAPE: dict[str, float] = {}


@pytest.fixture(scope="session")
def records() -> list[Record]:
    items = dataset.records(dataset.record_count())
    _SHAPE.update(dataset.describe(items))
    # The data set lives as long as the session: keep it out of every garbage collection
    # (it is the benchmark's memory, not the code's under test).
    gc.collect()
    gc.freeze()
    return items


@pytest.fixture(scope="session")
def batches(records: list[Record]) -> list[list[Record]]:
    items = list(dataset.batches(records, BATCH))
    # The batch lists too: a thousand lists holding a million references would otherwise be
    # visited by every full collection, which the code under test would pay for.
    gc.collect()
    gc.freeze()
    return items


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """moto's server in this process, on a free port of 127.0.0.1, as ``run --local`` starts it."""
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End to end last: its emulator leaves a large heap behind, which would make the garbage
    collections of every in-memory benchmark after it slower."""
    items.sort(key=lambda item: "test_end_to_end" in item.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("streamproc benchmark summary")
    if _SHAPE:
        write(
            "data set: {records:,.0f} records, {cards:,.0f} cards, {stores:,.0f} stores, "
            "{products:,.0f} products, {over_2000_pct:.2f}% over 2000, {out_of_state_pct:.2f}% "
            "out of state, {records_per_event_second:,.0f} records per event-time second".format(
                **_SHAPE
            )
        )
    for line in table().splitlines():
        write(line)
