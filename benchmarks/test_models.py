"""Fraud-score model cost per record: the shipped LightGBM model at shard batch sizes.

Feature rows (streamproc.features over seeded demo transactions) are computed once, outside the
timed part; each round scores the same 1,000 rows in batches of 1, 100 or 1,000 (one
``Model.predict`` call per batch, as a shard scores a GetRecords batch), so ``extra_info``
gives µs/record comparable across batch sizes. The numbers behind choosing LightGBM over
XGBoost are in the docstring of streamproc.models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.summary import report
from streamproc.demo import DemoSpec, transactions
from streamproc.features import FeatureState
from streamproc.models import Model, load_model
from streamproc.records import Position

ROOT = Path(__file__).resolve().parents[1]
ROWS = 1_000
WARM_UP = 20_000  # records before the scored ones, so windowed features carry real history


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(ROOT / "rules" / "models" / "fraud_gbt.txt")


@pytest.fixture(scope="module")
def rows(model: Model) -> list[list[float]]:
    state = FeatureState(model.feature_names)
    computed = [
        state.observe(tx, Position(i))
        for i, tx in enumerate(transactions(DemoSpec(seed=1), WARM_UP + ROWS))
    ]
    return computed[-ROWS:]


@pytest.mark.parametrize("batch_size", [1, 100, 1000])
def test_model_scoring(
    benchmark: Any, model: Model, rows: list[list[float]], batch_size: int
) -> None:
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    predict = model.predict

    def run() -> int:
        scored = 0
        for batch in batches:
            scored += len(predict(batch))
        return scored

    assert benchmark(run) == ROWS
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["batch_size"] = batch_size
    benchmark.extra_info["us_per_batch"] = round(mean / len(batches) * 1e6, 2)
    report(
        benchmark,
        f"model scoring, batch {batch_size:,}",
        ROWS,
        note="LightGBM, 1 thread",
        compare=False,
    )
