"""Model rules in the shard processor: batch scoring, severities, reloads, restarts.

The shipped model (rules/models/) is scored with the real library; no mocks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc.demo import DemoSpec, labelled_transactions
from streamproc.errors import RuleCompileError
from streamproc.features import FeatureState
from streamproc.interfaces import RestorePoint
from streamproc.modelrule import model_rule
from streamproc.models import load_model
from streamproc.processor import ShardProcessor
from streamproc.records import Position, Record, make_alert_id
from streamproc.ruleset import RuleSet, load_rules

ROOT = Path(__file__).resolve().parents[2]
MODEL = next((ROOT / "rules" / "models").glob("fraud_gbt.*"))
SPEC = DemoSpec(seed=5, cards=300, burst_share=0.01, fraud_share=0.02)


def records(txs: list[dict[str, Any]], shard: str = "shardId-0") -> list[Record]:
    return [
        Record(
            data=orjson.dumps(tx),
            partition_key=tx["card_id"],
            sequence_number=str(1000 + i),
            sub_sequence_number=0,
            arrival_ms=1_780_000_000_000,
            shard_id=shard,
        )
        for i, tx in enumerate(txs)
    ]


def processor(rules: Any, shard: str = "shardId-0") -> ShardProcessor:
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet((), (), tuple(rules))
    return ShardProcessor(ruleset, default_sinks=("memory",), shard_id=shard)


def make_rule(tmp_path: Path, **kw: Any) -> Any:
    model = tmp_path / MODEL.name
    if not model.exists():
        shutil.copy(MODEL, model)
    defaults: dict[str, Any] = {
        "name": "fraud_score",
        "model": str(model),
        "threshold": 0.5,
        "select": ["tx_id", "amount"],
        "reload_interval_s": 0.0,
    }
    return model_rule(**{**defaults, **kw})


def test_batch_scores_equal_the_librarys_per_record_scores(tmp_path: Path) -> None:
    txs = [tx for tx, _ in labelled_transactions(SPEC, 3000)]
    rule = make_rule(tmp_path, threshold=0.0)  # every record alerts: every score is visible
    batch = processor([rule]).process(records(txs))
    assert len(batch.alerts) == 3000 and not batch.dead_letters
    model = load_model(MODEL)
    features = FeatureState(model.feature_names)
    one_by_one = [
        model.predict([features.observe(tx, Position(1000 + i))])[0] for i, tx in enumerate(txs)
    ]
    assert [a.fields["score"] for a in batch.alerts] == [round(s, 6) for s in one_by_one]
    # Batches of any size give the same scores as one big batch.
    small = processor([rule])
    chunked = []
    recs = records(txs)
    for start in range(0, 3000, 7):
        chunked += small.process(recs[start : start + 7]).alerts
    assert [a.alert_id for a in chunked] == [a.alert_id for a in batch.alerts]
    assert [a.fields["score"] for a in chunked] == [a.fields["score"] for a in batch.alerts]


def test_the_model_separates_fraud_and_alerts_carry_severity_model_and_version(
    tmp_path: Path,
) -> None:
    labelled = list(labelled_transactions(SPEC, 5000))
    rule = make_rule(tmp_path, threshold=0.8)
    result = processor([rule]).process(records([tx for tx, _ in labelled]))
    fraud = {tx["tx_id"] for tx, label in labelled if label}
    flagged = {a.fields["tx_id"] for a in result.alerts}
    assert flagged and len(flagged & fraud) / len(flagged) > 0.8  # precision of the alerts
    model = load_model(MODEL)
    for alert in result.alerts:
        score = alert.fields["score"]
        assert score > 0.8
        assert alert.severity == ("CRITICAL" if score > 0.9 else "HIGH")
        assert alert.fields["model"] == model.name
        assert alert.fields["model_version"] == model.version
        assert alert.payload()["key"] == {"card_id": alert.key}


def test_severity_thresholds_are_configurable_per_rule(tmp_path: Path) -> None:
    rule = make_rule(tmp_path, severity_thresholds={"CRITICAL": 0.99, "HIGH": 0.3, "MEDIUM": 0.1})
    assert [rule.severity(s) for s in (0.995, 0.98, 0.3, 0.2, 0.05)] == [
        "CRITICAL",
        "HIGH",
        "MEDIUM",
        "MEDIUM",
        "LOW",
    ]


def test_a_corrupt_model_file_is_refused_and_the_old_model_keeps_scoring(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    txs = [tx for tx, _ in labelled_transactions(SPEC, 400)]
    rule = make_rule(tmp_path, threshold=0.0)
    before = processor([rule]).process(records(txs)).alerts
    Path(rule.model_path).write_text("this is not a model\n")
    after = processor([rule]).process(records(txs)).alerts
    assert [a.fields["score"] for a in after] == [a.fields["score"] for a in before]
    assert rule.model_file.reload_failures >= 1
    assert any("model" in r.getMessage().lower() for r in caplog.records if r.levelname == "ERROR")


def test_a_changed_valid_model_is_swapped_between_batches(tmp_path: Path) -> None:
    rule = make_rule(tmp_path, threshold=0.0)
    version = rule.model_file.model.version
    content = Path(rule.model_path).read_bytes()
    Path(rule.model_path).write_bytes(content + b"\n")  # same model, new bytes: new version
    txs = [tx for tx, _ in labelled_transactions(SPEC, 10)]
    alerts = processor([rule]).process(records(txs)).alerts
    assert rule.model_file.model.version != version
    assert {a.fields["model_version"] for a in alerts} == {rule.model_file.model.version}


def test_state_rebuilt_by_replay_scores_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    txs = [tx for tx, _ in labelled_transactions(SPEC, 4000)]
    recs = records(txs)
    rule = make_rule(tmp_path, threshold=0.0)
    whole = processor([rule]).process(recs).alerts
    first = processor([rule])
    first.process(recs[:2500])
    point = first.restore_point()
    assert point is not None and point.replay_from is not None
    start = next(i for i, r in enumerate(recs) if r.position == point.replay_from)
    assert start < 2500  # the features needed earlier records
    second = processor([rule])
    second.begin_restore(recs[2499].position, RestorePoint(None))
    resumed = second.process(recs[start:]).alerts
    assert [a.alert_id for a in resumed] == [a.alert_id for a in whole[2500:]]
    assert [a.fields["score"] for a in resumed] == [a.fields["score"] for a in whole[2500:]]


def test_records_without_the_features_go_to_the_dead_letter_destination(tmp_path: Path) -> None:
    rule = make_rule(tmp_path)
    bad = [{"tx_id": "t1", "card_id": "c1", "event_time": "2026-01-01T00:00:00Z"}]
    result = processor([rule]).process(records(bad))
    assert not result.alerts
    assert len(result.dead_letters) == 1
    assert "fraud_score" in result.dead_letters[0].reason


def test_a_missing_model_is_a_located_rule_error(tmp_path: Path) -> None:
    module = tmp_path / "rules.py"
    module.write_text(
        "from streamproc import model_rule\n\n"
        "score = model_rule(name='score', model='models/nope.txt')\n"
    )
    with pytest.raises(RuleCompileError) as error:
        load_rules([module])
    assert error.value.line == 3
    assert "nope" in str(error.value)


def test_the_shipped_fraud_model_rule_loads() -> None:
    ruleset = load_rules([ROOT / "rules" / "fraud_model.py"])
    spec = ruleset.stateful_by_name("fraud_score")
    assert spec.kind == "model"


def test_a_far_future_event_time_is_refused_and_does_not_evict_history(tmp_path: Path) -> None:
    txs = [tx for tx, _ in labelled_transactions(SPEC, 600)]
    rule = make_rule(tmp_path, threshold=0.0)
    clean = processor([rule]).process(records(txs))
    future = dict(txs[300], tx_id="tx-future", event_time="9999-01-01T00:00:00Z")
    poisoned = processor([rule]).process(records([*txs[:300], future, *txs[300:]]))
    assert [d.reason for d in poisoned.dead_letters] == [
        "event time '9999-01-01T00:00:00Z' is more than 3600 s ahead of the record's arrival "
        "(rule 'fraud_score')"
    ]
    assert [a.fields["score"] for a in poisoned.alerts] == [a.fields["score"] for a in clean.alerts]


def test_a_model_rule_alerts_on_an_sql_condition_over_the_record_and_the_score(
    tmp_path: Path,
) -> None:
    txs = [tx for tx, _ in labelled_transactions(SPEC, 3000)]
    every = processor([make_rule(tmp_path, threshold=0.0)]).process(records(txs)).alerts
    rule = make_rule(tmp_path, condition="score > 0.5 AND state <> home_state AND amount > 100")
    alerts = processor([rule]).process(records(txs)).alerts
    by_tx = {tx["tx_id"]: tx for tx in txs}
    expected = [
        a.fields["tx_id"]
        for a in every
        if a.fields["score"] > 0.5
        and by_tx[a.fields["tx_id"]]["state"] != by_tx[a.fields["tx_id"]]["home_state"]
        and by_tx[a.fields["tx_id"]]["amount"] > 100
    ]
    assert expected and [a.fields["tx_id"] for a in alerts] == expected
    assert "score > 0.5 AND" in rule.summary()


def test_a_condition_that_does_not_compile_is_a_rule_error(tmp_path: Path) -> None:
    with pytest.raises(RuleCompileError, match="fraud_score"):
        make_rule(tmp_path, condition="score >> 1")


def test_alert_ids_name_the_scored_record(tmp_path: Path) -> None:
    """A model alert's id is made from its record's tx_id, or without one from its place in the
    stream: the loop hands the rule no identity (none is made per record), the rule makes it
    for the alerts it writes."""
    txs = [tx for tx, _ in labelled_transactions(SPEC, 4)]
    del txs[1]["tx_id"]
    rule = make_rule(tmp_path, threshold=0.0, select=["amount"])
    alerts = processor([rule]).process(records(txs)).alerts
    assert [a.alert_id for a in alerts] == [
        make_alert_id("fraud_score", 1, f"tx_id={txs[0]['tx_id']}"),
        make_alert_id("fraud_score", 1, "shardId-0/1001/0"),
        make_alert_id("fraud_score", 1, f"tx_id={txs[2]['tx_id']}"),
        make_alert_id("fraud_score", 1, f"tx_id={txs[3]['tx_id']}"),
    ]
