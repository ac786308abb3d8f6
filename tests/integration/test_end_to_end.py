"""End to end on moto: stream → rules → EventBridge, SNS, SQS, DynamoDB → checkpoints.

Every alert is read back the way a downstream consumer would see it: an SQS queue targeted by an
EventBridge rule, an SQS queue subscribed to the SNS topic with a filter policy (HIGH and
CRITICAL only), the FIFO alert queue itself, and a scan of the DynamoDB alert table.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.integration.e2e import (
    SMALL_PURCHASE_RULE,
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

COUNT = 5_000


def test_every_expected_alert_reaches_every_sink_and_checkpoints_reach_the_end(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path, extra_rules=SMALL_PURCHASE_RULE)
    txs = env.produce(COUNT, seed=7)
    expected = expected_alerts(txs)
    assert len(expected["HIGH"]) > 30 and len(expected["LOW"]) > 30  # the data exercises both

    app = env.app()
    run_until(app.runtime, all_settled(COUNT))
    stop(app.runtime)

    totals = app.runtime.totals
    assert totals.records_read == COUNT
    assert totals.rule_matches == {
        "high_value_out_of_state": len(expected["HIGH"]),
        "small_purchase": len(expected["LOW"]),
    }
    everything = expected["HIGH"] | expected["LOW"]
    seen = alert_ids_at_destinations(env)
    assert sorted(seen["eventbridge"]) == sorted(everything)
    assert sorted(seen["sqs"]) == sorted(everything)
    assert sorted(seen["dynamodb"]) == sorted(everything)
    # the SNS subscription's filter policy passes HIGH and CRITICAL only
    assert sorted(seen["sns"]) == sorted(expected["HIGH"])
    assert env.dead_letters() == []
    # checkpoints moved to the last record of every shard
    assert checkpoints(env) == last_sequence_per_shard(env)


def test_graceful_restart_halfway_reads_nothing_twice_and_loses_nothing(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path)
    txs = env.produce(COUNT, seed=11)
    expected = expected_alerts(txs)["HIGH"]

    first = env.app()
    run_until(first.runtime, lambda rt: rt.totals.records_read >= COUNT // 2)
    stop(first.runtime)  # drain + final checkpoint
    read_first = first.runtime.totals.records_read
    assert read_first < COUNT

    second = env.app()
    run_until(second.runtime, all_settled(COUNT - read_first))
    stop(second.runtime)

    # the final checkpoint covered exactly what the first run read: no record read twice
    assert read_first + second.runtime.totals.records_read == COUNT
    seen = alert_ids_at_destinations(env)
    for sink in ("eventbridge", "sqs", "dynamodb", "sns"):
        assert sorted(seen[sink]) == sorted(expected), sink
    assert checkpoints(env) == last_sequence_per_shard(env)


def test_crash_before_checkpoint_replays_without_duplicates_at_idempotent_sinks(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    """The first run delivers alerts to some sinks but never checkpoints, then vanishes (no
    drain, no final checkpoint: what kill -9 leaves). The second run re-reads everything and
    re-sends every alert: DynamoDB's conditional put and the FIFO queue's deduplication id
    must absorb the replays."""
    env = make_env(moto_endpoint, unique_name, tmp_path)
    txs = env.produce(COUNT, seed=13)
    expected = expected_alerts(txs)["HIGH"]

    crashed = env.app(checkpoint_interval_s=3600)
    # SQS refuses every call of the first run (a canned throttling error from a botocore
    # before-send hook; moto never throttles), so the crash leaves deliveries half done: the
    # same alerts are at DynamoDB, EventBridge and SNS but not at SQS.
    crashed.runtime.sinks["sqs"]._client.meta.events.register(
        "before-send.sqs.SendMessageBatch", lambda **_: throttled()
    )
    run_until(crashed.runtime, lambda rt: rt.totals.records_read >= COUNT // 2)
    # Let the other sinks deliver what they hold, so the replay overlaps delivered alerts.
    run_until(
        crashed.runtime,
        lambda rt: rt.sinks["dynamodb"].pending() == 0 and rt.sinks["eventbridge"].pending() == 0,
        timeout=30,
    )
    delivered_before_crash = crashed.runtime.totals.sink_outcomes["dynamodb"]["sent"]
    assert delivered_before_crash > 0
    assert "sqs" not in crashed.runtime.totals.sink_outcomes
    assert checkpoints(env) == {}  # nothing checkpointed: the crash loses the position
    del crashed

    second = env.app()
    run_until(second.runtime, all_settled(COUNT))
    stop(second.runtime)
    outcomes = second.runtime.totals.sink_outcomes["dynamodb"]
    assert outcomes.get("duplicate", 0) == delivered_before_crash  # replays were no-ops
    assert outcomes.get("sent", 0) + delivered_before_crash == len(expected)

    seen = alert_ids_at_destinations(env)
    assert sorted(seen["dynamodb"]) == sorted(expected)
    assert sorted(seen["sqs"]) == sorted(expected)  # FIFO: each alert exactly once
    assert max(Counter(seen["sqs"]).values()) == 1
    # EventBridge and standard SNS→SQS cannot deduplicate: consumers see the id twice at most.
    assert set(seen["eventbridge"]) == expected
    assert max(Counter(seen["eventbridge"]).values()) <= 2
