"""Train the shipped fraud-score model (rules/models/fraud_gbt.txt) on labelled demo data.

Generates seeded, labelled demo transactions (streamproc.demo.labelled_transactions: the
"large amount far from home at a new merchant" pattern and card-testing bursts are fraud),
computes the features of streamproc.models.FRAUD_FEATURES the way a running rule does
(streamproc.features.FeatureState, records in order), trains a small LightGBM model on the first
80% of the records in event time and reports the AUC on the last 20%. Training is
deterministic: the same arguments write the same model file. Run from the repository root:

    .venv/bin/python tools/train_fraud_model.py            # defaults as shipped
    .venv/bin/python tools/train_fraud_model.py --help
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import lightgbm
import numpy

from streamproc.demo import DemoSpec, labelled_transactions
from streamproc.features import FeatureState
from streamproc.models import FRAUD_FEATURES, load_model
from streamproc.records import Position

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "rules" / "models" / "fraud_gbt.txt"
HOLDOUT_SHARE = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Train the fraud-score model on seeded, labelled demo transactions and write it as "
            "a LightGBM text model (streamproc.models loads it). Features: "
            + ", ".join(FRAUD_FEATURES)
            + ". Trains on the first 80% of the records in event time, reports AUC on the rest."
        )
    )
    parser.add_argument(
        "--count", type=int, default=300_000, help="transactions to generate (default 300000)"
    )
    parser.add_argument(
        "--seed", type=int, default=11, help="seed of the data and of training (default 11)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"model file to write, .txt (default {DEFAULT_OUT.relative_to(ROOT)})",
    )
    parser.add_argument("--trees", type=int, default=60, help="boosting rounds (default 60)")
    parser.add_argument("--depth", type=int, default=4, help="maximum tree depth, 2..8 (default 4)")
    parser.add_argument("--learning-rate", type=float, default=0.1, help="shrinkage (default 0.1)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".txt":
        parser.error("--out must end in .txt (a LightGBM text model)")
    if not 2 <= args.depth <= 8:
        parser.error("--depth must be between 2 and 8")
    if args.count < 1000:
        parser.error("--count must be at least 1000")

    started = time.perf_counter()
    spec = DemoSpec(seed=args.seed, cards=5000, burst_share=0.003, fraud_share=0.01)
    features, labels = feature_rows(spec, args.count)
    feature_seconds = time.perf_counter() - started
    cut = int(len(labels) * (1 - HOLDOUT_SHARE))

    params = {
        "objective": "binary",
        "learning_rate": args.learning_rate,
        "max_depth": args.depth,
        "num_leaves": 2**args.depth - 1,
        "min_data_in_leaf": 20,
        "num_threads": 1,
        "deterministic": True,
        "force_row_wise": True,
        "seed": args.seed,
        "verbose": -1,
    }
    started = time.perf_counter()
    train = lightgbm.Dataset(features[:cut], labels[:cut], feature_name=list(FRAUD_FEATURES))
    booster = lightgbm.train(params, train, num_boost_round=args.trees)
    train_seconds = time.perf_counter() - started

    args.out.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(args.out))
    model = load_model(args.out)  # what a rule loads: check it scores like the trained booster
    holdout = features[cut:]
    scores = numpy.asarray(model.predict(holdout.tolist()), dtype=numpy.float64)
    if not numpy.allclose(scores, booster.predict(holdout, num_threads=1), rtol=0, atol=1e-12):
        print("the written model scores differently from the trained one", file=sys.stderr)
        return 1

    print(f"rows: {len(labels)} ({cut} train, {len(labels) - cut} held out, split by time)")
    print(
        f"positives: {int(labels.sum())} ({labels.mean():.2%}); "
        f"train {int(labels[:cut].sum())}, held out {int(labels[cut:].sum())}"
    )
    print(f"held-out AUC: {auc(scores, labels[cut:]):.5f}")
    print(
        f"features: {feature_seconds:.1f} s; training: {train_seconds:.2f} s "
        f"({args.trees} trees, depth {args.depth}, {params['num_leaves']} leaves max)"
    )
    gains = booster.feature_importance(importance_type="gain")
    total = float(gains.sum()) or 1.0
    ranked = sorted(zip(FRAUD_FEATURES, gains, strict=True), key=lambda item: -item[1])
    print("gain: " + ", ".join(f"{name} {gain / total:.1%}" for name, gain in ranked))
    print(
        f"model: {args.out} ({args.out.stat().st_size} bytes, version {model.version}, "
        f"features {', '.join(model.feature_names)})"
    )
    return 0


def feature_rows(spec: DemoSpec, count: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Feature rows (float64, one per transaction, in order) and 0/1 fraud labels."""
    state = FeatureState(FRAUD_FEATURES)
    rows = []
    labels = []
    for i, (tx, is_fraud) in enumerate(labelled_transactions(spec, count)):
        rows.append(state.observe(tx, Position(i)))
        labels.append(1.0 if is_fraud else 0.0)
    return numpy.asarray(rows, dtype=numpy.float64), numpy.asarray(labels, dtype=numpy.float64)


def auc(scores: numpy.ndarray, labels: numpy.ndarray) -> float:
    """Area under the ROC curve by the rank formula (Mann-Whitney U); ties get mean ranks.

    AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N), ranks 1-based over all scores.
    """
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    order = numpy.argsort(scores, kind="stable")
    ordered = scores[order]
    ranks = numpy.empty(len(scores), dtype=numpy.float64)
    # Runs of equal scores share the mean of the ranks they span.
    starts = numpy.flatnonzero(numpy.r_[True, ordered[1:] != ordered[:-1]])
    ends = numpy.r_[starts[1:], len(ordered)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2
    rank_sum = float(ranks[labels == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


if __name__ == "__main__":
    sys.exit(main())
