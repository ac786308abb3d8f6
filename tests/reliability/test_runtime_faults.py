"""The runtime under sink faults: checkpoints never pass an unacknowledged alert.

Faults are injected with botocore event hooks on the SQS sink's real client (moto never fails a
call): a ``before-send`` hook answers SendMessageBatch with a canned throttling error while the
fault is on; an ``after-call`` hook rewrites a response so chosen entries fail permanently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from botocore.awsrequest import AWSResponse

from tests.integration.e2e import (
    alert_ids_at_destinations,
    all_settled,
    checkpoints,
    expected_alerts,
    last_sequence_per_shard,
    make_env,
    run_until,
    stop,
    throttled,
)

COUNT = 2_000


def sqs_client_of(app: Any) -> Any:
    return app.runtime.sinks["sqs"]._client


def test_checkpoint_waits_for_a_throttled_sink_and_moves_once_it_recovers(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path, shards=2)
    txs = env.produce(COUNT, seed=21)
    expected = expected_alerts(txs)["HIGH"]
    app = env.app()
    fault = {"on": True, "calls": 0}

    def before_send(**_: Any) -> AWSResponse | None:
        if fault["on"]:
            fault["calls"] += 1
            return throttled()
        return None

    sqs_client_of(app).meta.events.register("before-send.sqs.SendMessageBatch", before_send)
    runtime = app.runtime
    # Read everything while SQS refuses every batch; the other sinks deliver.
    run_until(runtime, lambda rt: rt.totals.records_read >= COUNT)
    run_until(runtime, lambda rt: fault["calls"] >= 5, timeout=60)
    for _ in range(50):  # many loop turns, several checkpoint intervals
        runtime.run_once()
    assert "sqs" not in runtime.totals.sink_outcomes  # nothing acknowledged by SQS
    assert runtime.sinks["sqs"].pending() == len(expected)

    # For every shard, the checkpoint is below the first record that produced an alert.
    first_alert_seq: dict[str, int] = {}
    for buffered in runtime.sinks["sqs"]._buffer:
        alert = buffered.delivery.alert
        seq = int(alert.sequence_number)
        first_alert_seq[alert.shard_id] = min(seq, first_alert_seq.get(alert.shard_id, seq))
    stored = checkpoints(env)
    for shard_id, seq in first_alert_seq.items():
        assert stored.get(shard_id, -1) < seq, (shard_id, stored.get(shard_id), seq)

    fault["on"] = False
    run_until(runtime, all_settled(COUNT), timeout=120)
    stop(runtime)
    assert sorted(alert_ids_at_destinations(env)["sqs"]) == sorted(expected)
    assert checkpoints(env) == last_sequence_per_shard(env)
    assert runtime.totals.sink_outcomes["sqs"] == {"sent": len(expected)}


def test_permanently_refused_alerts_are_parked_with_the_code_and_the_shard_moves_on(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path, shards=2)
    txs = env.produce(COUNT, seed=22)
    expected = sorted(expected_alerts(txs)["HIGH"])
    refused = set(expected[:3])
    app = env.app()

    # The sink numbers entries by batch index; refuse chosen alerts by cutting them out of the
    # request (moto never sees them) and reporting them failed in the parsed response.
    refused_ids: list[str] = []

    def cut_refused(params: dict[str, Any], **_: Any) -> None:
        refused_ids.clear()
        kept = []
        for e in params["Entries"]:
            if json.loads(e["MessageBody"])["alert_id"] in refused:
                refused_ids.append(e["Id"])
            else:
                kept.append(e)
        params["Entries"] = kept

    def fail_refused(parsed: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("Failed", [])
        for entry_id in refused_ids:
            parsed["Failed"].append(
                {"Id": entry_id, "SenderFault": True, "Code": "InvalidMessageContents",
                 "Message": "injected"}
            )  # fmt: skip

    events = sqs_client_of(app).meta.events
    events.register("provide-client-params.sqs.SendMessageBatch", cut_refused)
    events.register("after-call.sqs.SendMessageBatch", fail_refused)

    run_until(app.runtime, all_settled(COUNT))
    stop(app.runtime)

    outcomes = app.runtime.totals.sink_outcomes["sqs"]
    assert outcomes == {"sent": len(expected) - 3, "parked": 3}
    parked = [d for d in env.dead_letters() if d["kind"] == "alert"]
    assert sorted(d["alert_id"] for d in parked) == sorted(refused)
    assert all(d["sink"] == "sqs" and "InvalidMessageContents" in d["reason"] for d in parked)
    assert sorted(alert_ids_at_destinations(env)["sqs"]) == sorted(set(expected) - refused)
    # a parked alert counts as decided: the checkpoint still reaches the end of every shard
    assert checkpoints(env) == last_sequence_per_shard(env)
