"""The Prometheus endpoint after a real run: the numbers an operator graphs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from streamproc.app import build_app
from streamproc.config import MetricsConfig
from streamproc.emulators import free_port
from tests.integration.e2e import all_settled, expected_alerts, make_env, run_until, stop


def test_metrics_endpoint_reports_reads_matches_outcomes_and_lag(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path, shards=2)
    txs = env.produce(1_500, seed=31)
    env.put_raw([(b"not json", "bad")])
    expected = len(expected_alerts(txs)["HIGH"])
    port = free_port()
    config = dataclasses.replace(env.config, metrics=MetricsConfig(host="127.0.0.1", port=port))
    app = build_app(config, local=True)
    assert app.metrics_url == f"http://127.0.0.1:{port}/metrics"
    run_until(app.runtime, all_settled(1_501))

    stop(app.runtime)  # drain + final checkpoint; the endpoint keeps serving
    text = requests.get(app.metrics_url, timeout=5).text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def total(name: str, **labels: str) -> float:
        return sum(
            v for (n, ls), v in samples.items()
            if n == name and all((k, val) in ls for k, val in labels.items())
        )  # fmt: skip

    assert total("streamproc_records_read_total") == 1_501
    assert total("streamproc_records_dead_lettered_total") == 1
    assert total("streamproc_rule_matches_total", rule="high_value_out_of_state") == expected
    for sink, batch_limit in (("eventbridge", 10), ("sns", 10), ("sqs", 10), ("dynamodb", 25)):
        assert total("streamproc_alerts_total", sink=sink, outcome="sent") == expected
        # one observation per batch call: at least ceil(alerts / batch limit) of them
        assert total("streamproc_sink_batch_seconds_count", sink=sink) >= -(
            -expected // batch_limit
        )
    # after the final checkpoint nothing read is uncovered
    assert total("streamproc_checkpoint_lag_records") == 0
    assert total("streamproc_checkpoint_failures_total") == 0
    assert {ls for (n, ls) in samples if n == "streamproc_millis_behind_latest"} == {
        (("shard", "shardId-000000000000"),),
        (("shard", "shardId-000000000001"),),
    }
    assert total("streamproc_checkpoints_total") >= 2
