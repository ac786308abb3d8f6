"""Shared benchmark data: seeded demo transactions, encoded once per session."""

from __future__ import annotations

import pytest

from streamproc.demo import DemoSpec, encode, transactions
from streamproc.records import Record

RECORDS = 100_000
BATCH = 1_000


@pytest.fixture(scope="session")
def records() -> list[Record]:
    out = []
    for n, tx in enumerate(transactions(DemoSpec(seed=1), RECORDS)):
        data, key = encode(tx)
        out.append(Record(data, key, str(n + 1), 0, 1_767_225_600_000, "shardId-000000000000"))
    return out


@pytest.fixture(scope="session")
def batches(records: list[Record]) -> list[list[Record]]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
