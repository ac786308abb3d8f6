"""Model alerts end to end on moto: every alert reaches DynamoDB; the SNS subscription that
filters on the ``severity`` message attribute receives exactly the HIGH and CRITICAL ones."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from streamproc.demo import DemoSpec, Producer, encode, transactions
from tests.integration.e2e import (
    ROOT,
    alert_ids_at_destinations,
    all_settled,
    make_env,
    run_until,
    stop,
)

COUNT = 300
MODEL = ROOT / "rules" / "models" / "fraud_gbt.txt"
# threshold 0: every transaction is an alert, so every severity occurs.
EVERY_SCORE = f"""
from streamproc import model_rule

every_score = model_rule(
    name="every_score",
    model={str(MODEL)!r},
    threshold=0.0,
    severity_thresholds={{"CRITICAL": 0.9, "HIGH": 0.7, "MEDIUM": 0.5}},
    select=["tx_id", "amount"],
    sinks=["sns", "dynamodb"],
)
"""


def test_sns_filter_on_severity_passes_only_high_and_critical_model_alerts(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path, extra_rules=EVERY_SCORE)
    # More fraud than the default demo mix, so a few hundred records hold every severity.
    txs = transactions(DemoSpec(seed=17, fraud_share=0.05), COUNT)
    Producer(env.client("kinesis"), env.resources.stream).send(encode(t) for t in txs)
    app = env.app()
    run_until(app.runtime, all_settled(COUNT), timeout=180)
    stop(app.runtime)

    at = alert_ids_at_destinations(env)
    items = env.client("dynamodb").scan(TableName=env.resources.alerts_table)["Items"]
    severity = {i["alert_id"]["S"]: i["severity"]["S"] for i in items}
    rule = {i["alert_id"]["S"]: i["rule"]["S"] for i in items}
    assert set(at["dynamodb"]) == set(severity)
    model = Counter(severity[a] for a in severity if rule[a] == "every_score")
    assert sum(model.values()) == COUNT == app.runtime.totals.rule_matches["every_score"]
    assert model["LOW"] > 0 and model["HIGH"] + model["CRITICAL"] > 0  # both sides of the filter
    high = {a for a, s in severity.items() if s in ("HIGH", "CRITICAL")}
    assert set(at["sns"]) == high
    assert len(at["sns"]) == len(high)  # and each once
