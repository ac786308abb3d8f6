"""Fraud-score models: the shipped LightGBM model, ONNX models, load errors and hot reload.

Real libraries throughout: small models are trained (LightGBM) or built (onnx.helper) here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import lightgbm
import numpy
import orjson
import pytest

from streamproc.demo import DemoSpec, labelled_transactions, transactions
from streamproc.features import FeatureState
from streamproc.models import FRAUD_FEATURES, ModelError, ModelFile, OnnxModel, load_model
from streamproc.records import Position

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "rules" / "models" / "fraud_gbt.txt"


def feature_rows(
    spec: DemoSpec, count: int, names: Sequence[str] = FRAUD_FEATURES
) -> tuple[list[list[float]], list[bool]]:
    state = FeatureState(names)
    rows, labels = [], []
    for i, (tx, is_fraud) in enumerate(labelled_transactions(spec, count)):
        rows.append(state.observe(tx, Position(i)))
        labels.append(is_fraud)
    return rows, labels


@pytest.fixture(scope="module")
def labelled_rows() -> tuple[list[list[float]], list[bool]]:
    # A seed the shipped model was not trained on.
    return feature_rows(DemoSpec(seed=3, cards=5000, burst_share=0.003, fraud_share=0.01), 20_000)


def train_tiny(path: Path, names: Sequence[str] = FRAUD_FEATURES, *, seed: int = 1) -> Path:
    """A small but real LightGBM text model over ``names`` (random data, fixed seed)."""
    rng = numpy.random.default_rng(seed)
    features = rng.uniform(0, 10, size=(400, len(names)))
    labels = (features[:, 0] + rng.normal(0, 1, 400) > 5).astype(float)
    params = {"objective": "binary", "num_leaves": 4, "num_threads": 1, "verbose": -1}
    params |= {"deterministic": True, "seed": seed, "min_data_in_leaf": 5}
    booster = lightgbm.train(
        params, lightgbm.Dataset(features, labels, feature_name=list(names)), num_boost_round=3
    )
    booster.save_model(str(path))
    return path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` the way a deploy should: a temporary file renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- the shipped LightGBM model -------------------------------------------------------------


def test_shipped_model_loads_with_its_feature_names_and_version() -> None:
    model = load_model(SHIPPED)
    assert model.feature_names == FRAUD_FEATURES
    assert model.name == "fraud_gbt"
    assert model.path == str(SHIPPED)
    assert len(model.version) == 12
    assert int(model.version, 16) >= 0
    assert load_model(SHIPPED).version == model.version  # the same bytes, the same version


def test_batch_scores_equal_per_record_scores(
    labelled_rows: tuple[list[list[float]], list[bool]],
) -> None:
    model = load_model(SHIPPED)
    rows = labelled_rows[0][-1000:]
    batch = model.predict(rows)
    assert len(batch) == 1000
    alone = [model.predict([row])[0] for row in rows]
    assert max(abs(a - b) for a, b in zip(batch, alone, strict=True)) <= 1e-12
    assert all(0.0 <= score <= 1.0 for score in batch)
    assert model.predict(numpy.asarray(rows)) == batch  # a numpy array is a batch too
    assert model.predict([]) == []


def test_shipped_model_separates_fraud_from_normal_transactions(
    labelled_rows: tuple[list[list[float]], list[bool]],
) -> None:
    rows, labels = labelled_rows
    scores = load_model(SHIPPED).predict(rows)
    fraud = [s for s, f in zip(scores, labels, strict=True) if f]
    normal = [s for s, f in zip(scores, labels, strict=True) if not f]
    assert len(fraud) > 200
    assert sum(s > 0.5 for s in fraud) / len(fraud) > 0.9
    assert sum(s > 0.5 for s in normal) / len(normal) < 0.01


def test_rows_of_the_wrong_width_are_refused() -> None:
    model = load_model(SHIPPED)
    with pytest.raises(ModelError, match="each row needs 7 numbers"):
        model.predict([[1.0, 2.0]])


# --- load errors -----------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(ModelError, match="no such file") as raised:
        load_model(path)
    assert str(path) in str(raised.value)
    assert raised.value.path == str(path)


@pytest.mark.parametrize("name", ["garbage.txt", "garbage.onnx"])
def test_a_file_the_library_cannot_parse_is_a_model_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"tree\nthis is not a model\n\x00\x01")
    with pytest.raises(ModelError, match=r"cannot (read|load) it") as raised:
        load_model(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("model.pkl", "pickled models are never loaded"),
        ("model.json", "XGBoost models are not supported"),
        ("model.bin", r"use \.txt"),
        ("model", "no file extension"),
    ],
)
def test_unsupported_extensions_are_refused(tmp_path: Path, name: str, hint: str) -> None:
    path = tmp_path / name
    shutil.copy(SHIPPED, path)
    with pytest.raises(ModelError, match=r"extension.*: use \.txt \(LightGBM") as raised:
        load_model(path)
    assert str(path) in str(raised.value)
    assert raised.match(hint)


def test_a_model_without_feature_names_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unnamed.txt"
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5},
        lightgbm.Dataset(numpy.arange(100.0).reshape(50, 2), numpy.arange(50) % 2),
        num_boost_round=2,
    )
    booster.save_model(str(path))
    with pytest.raises(ModelError, match="trained without feature names"):
        load_model(path)


def test_a_regression_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "regression.txt"
    booster = lightgbm.train(
        {"objective": "regression", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5},
        lightgbm.Dataset(
            numpy.arange(100.0).reshape(50, 2), numpy.arange(50.0), feature_name=["a", "b"]
        ),
        num_boost_round=2,
    )
    booster.save_model(str(path))
    with pytest.raises(ModelError, match="objective 'regression' does not predict probabilities"):
        load_model(path)


# --- ModelFile: hot reload -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    path = tmp_path / "fraud_gbt.txt"
    shutil.copy(SHIPPED, path)
    return path


def test_an_updated_model_is_swapped_after_the_check_interval(
    deployed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    model_file = ModelFile(deployed, check_interval_s=5.0, clock=clock)
    old = model_file.model
    update = train_tiny(tmp_path / "update.txt")
    replace_file(deployed, update.read_bytes())

    clock.now += 4.9
    assert model_file.maybe_reload() is False  # not yet: at most every check_interval_s
    assert model_file.model is old

    clock.now += 0.2
    with caplog.at_level(logging.INFO, logger="streamproc.models"):
        assert model_file.maybe_reload() is True
    new = model_file.model
    assert new.version == load_model(update).version != old.version
    assert model_file.reloads == 1
    assert model_file.reload_failures == 0
    rows = [[float(i)] * len(FRAUD_FEATURES) for i in range(10)]
    assert new.predict(rows) == load_model(update).predict(rows)
    assert f"version {old.version} -> {new.version}" in caplog.text

    clock.now += 10
    assert model_file.maybe_reload() is False  # unchanged file: nothing to do


def test_a_corrupt_update_is_rejected_and_the_old_model_keeps_scoring(
    deployed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    model_file = ModelFile(deployed, clock=clock)
    old = model_file.model
    rows = [[float(i), 0.0, 1.0, float(i), 1.0, 1.0, 1.0] for i in range(0, 9000, 300)]
    before = old.predict(rows)

    replace_file(deployed, b"tree\nversion=v4\nthis is not a model\n")
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="streamproc.models"):
        assert model_file.maybe_reload() is False
    assert model_file.model is old
    assert model_file.model.predict(rows) == before
    assert model_file.reload_failures == 1
    assert model_file.reloads == 0
    assert f"still scoring with version {old.version}" in caplog.text
    assert str(deployed) in caplog.text

    clock.now += 5
    assert model_file.maybe_reload() is False
    assert model_file.reload_failures == 1  # the same bad file is not retried

    replace_file(deployed, SHIPPED.read_bytes())  # fixed: back to a good file
    clock.now += 5
    assert model_file.maybe_reload() is True
    assert model_file.model.version == old.version
    assert model_file.last_error is None


def test_a_model_with_other_features_is_rejected(
    deployed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    model_file = ModelFile(deployed, clock=clock)
    old = model_file.model
    other = train_tiny(tmp_path / "other.txt", ("amount", "tx_count_10m"))
    replace_file(deployed, other.read_bytes())
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="streamproc.models"):
        assert model_file.maybe_reload() is False
    assert model_file.model is old
    assert model_file.reload_failures == 1
    assert model_file.last_error is not None
    assert "['amount', 'tx_count_10m']" in model_file.last_error
    assert "restart streamproc" in caplog.text


def test_a_missing_file_keeps_the_old_model(
    deployed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    model_file = ModelFile(deployed, clock=clock)
    old = model_file.model
    deployed.unlink()
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="streamproc.models"):
        assert model_file.maybe_reload() is False
    assert model_file.model is old
    assert model_file.reload_failures == 1
    assert "missing" in caplog.text
    assert model_file.model.predict([[0.0] * 7]) == old.predict([[0.0] * 7])


def test_model_file_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        ModelFile(tmp_path / "absent.txt")


# --- ONNX ------------------------------------------------------------------------------------

WEIGHTS = numpy.array([[0.002], [1.5], [-0.25]], dtype=numpy.float32)
BIAS = numpy.array([-3.0], dtype=numpy.float32)
NAMES = ("amount", "out_of_state", "tx_count_10m")


def logistic_onnx(
    path: Path, *, two_columns: bool = False, names: str | None = ",".join(NAMES)
) -> Path:
    """sigmoid(X @ W + b) as an ONNX model: output [N, 1], or [N, 2] as (1 - p, p)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["XW"]),
        helper.make_node("Add", ["XW", "B"], ["Z"]),
        helper.make_node("Sigmoid", ["Z"], ["P"]),
    ]
    initializers = [numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "B")]
    output = "P"
    if two_columns:
        one = numpy.array([1.0], dtype=numpy.float32)
        initializers.append(numpy_helper.from_array(one, "ONE"))
        nodes += [
            helper.make_node("Sub", ["ONE", "P"], ["Q"]),
            helper.make_node("Concat", ["Q", "P"], ["probabilities"], axis=1),
        ]
        output = "probabilities"
    graph = helper.make_graph(
        nodes,
        "logistic",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", len(NAMES)])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 2 if two_columns else 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        helper.set_model_props(model, {"feature_names": names})
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def expected_logistic(rows: numpy.ndarray) -> numpy.ndarray:
    z = rows.astype(numpy.float64) @ WEIGHTS.astype(numpy.float64) + BIAS.astype(numpy.float64)
    return (1 / (1 + numpy.exp(-z)))[:, 0]


@pytest.mark.parametrize("two_columns", [False, True])
def test_onnx_model_scores_like_numpy(tmp_path: Path, two_columns: bool) -> None:
    path = logistic_onnx(tmp_path / "logistic.onnx", two_columns=two_columns)
    model = load_model(path)
    assert isinstance(model, OnnxModel)
    assert model.feature_names == NAMES
    assert model.name == "logistic"
    rng = numpy.random.default_rng(7)
    rows = numpy.column_stack(
        [rng.uniform(0, 3000, 500), rng.integers(0, 2, 500), rng.integers(1, 10, 500)]
    )
    scores = model.predict(rows.tolist())
    numpy.testing.assert_allclose(scores, expected_logistic(rows), rtol=0, atol=1e-6)
    assert scores == [model.predict([row])[0] for row in rows.tolist()]


def test_onnx_model_without_feature_names_is_refused(tmp_path: Path) -> None:
    path = logistic_onnx(tmp_path / "unnamed.onnx", names=None)
    with pytest.raises(ModelError, match="metadata property 'feature_names'") as raised:
        load_model(path)
    assert str(path) in str(raised.value)


def test_onnx_feature_names_must_match_the_input_width(tmp_path: Path) -> None:
    path = logistic_onnx(tmp_path / "short.onnx", names="amount,out_of_state")
    with pytest.raises(ModelError, match="input has 3 columns but 'feature_names' lists 2"):
        load_model(path)


# --- labelled demo data ----------------------------------------------------------------------


def test_labelled_transactions_are_the_demo_transactions() -> None:
    spec = DemoSpec(seed=5, cards=500, fraud_share=0.05, burst_share=0.01)
    labelled = list(labelled_transactions(spec, 3000))
    assert [tx for tx, _ in labelled] == list(transactions(spec, 3000))
    frauds = [tx for tx, is_fraud in labelled if is_fraud]
    assert 100 < len(frauds) < 600
    online = [tx for tx in frauds if " Online " in tx["merchant"]]
    assert online  # the "new merchant" pattern
    assert all(tx["state"] != tx["home_state"] and tx["amount"] > 2000 for tx in online)
    normal = [tx for tx, is_fraud in labelled if not is_fraud]
    assert not any(" Online " in tx["merchant"] for tx in normal)


def test_demo_transactions_are_unchanged_apart_from_fraud_merchants() -> None:
    """Every field but ``merchant`` of the seeded stream that tests and benchmarks compute
    expectations from is pinned (the digest was taken before the fraud merchants were added:
    they draw no random numbers)."""
    digest = hashlib.sha256()
    for tx in transactions(DemoSpec(seed=1), 2000):
        digest.update(orjson.dumps({k: v for k, v in tx.items() if k != "merchant"}))
    assert digest.hexdigest() == (
        "db4fe52c24e0d430f90164822f419fd5666d412b9506547f29b835b70482492e"
    )
