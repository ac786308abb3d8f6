"""Windows are exact across restarts: the same stream processed uninterrupted, and processed
with three stop/restart cycles at random points, gives identical alert sets — window state is
rebuilt on restart by replaying from the checkpoint's ``replay_from`` position."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from streamproc.config import RulesConfig, RuntimeConfig
from streamproc.demo import DemoSpec, Producer, encode, transactions
from tests.integration.e2e import (
    ROOT,
    Env,
    alert_ids_at_destinations,
    all_settled,
    make_env,
    run_until,
    stop,
)

COUNT = 20_000
SEED = 17


def jittered_records() -> list[tuple[bytes, str]]:
    """20,000 transactions over ~1.1 hours of event time (so hourly windows close mid-stream and
    replay_from moves on), 3% of them shifted up to 2 minutes back: beyond the shipped rules'
    allowed lateness, so some are late and dead-lettered, the same way in both runs."""
    rng = random.Random(3)
    out = []
    for tx in transactions(DemoSpec(seed=SEED, events_per_second=5.0), COUNT):
        if rng.random() < 0.03:
            at = datetime.fromisoformat(tx["event_time"]) - timedelta(seconds=rng.uniform(1, 120))
            tx["event_time"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append(encode(tx))
    return out


def dynamodb_alerts(env: Env) -> dict[str, dict[str, str]]:
    """alert_id -> {rule, payload} from the alert table (the idempotent sink)."""
    ddb = env.client("dynamodb")
    items: dict[str, dict[str, str]] = {}
    kwargs: dict[str, object] = {"TableName": env.resources.alerts_table}
    while True:
        page = ddb.scan(**kwargs)
        for item in page["Items"]:
            items[item["alert_id"]["S"]] = {"rule": item["rule"]["S"]}
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def late_letters(env: Env) -> list[tuple[str, str, str | None]]:
    return sorted(
        (d["shard_id"], d["sequence_number"], d["rule"])
        for d in env.dead_letters()
        if d["reason"].startswith("late event")
    )


def fast(env: Env) -> Env:
    rules = RulesConfig(paths=(str(ROOT / "rules"),))  # the shipped condition and window rules
    # Close windows quickly once the stream is drained (the data's event time spans ~40 s).
    runtime = RuntimeConfig(checkpoint_interval_s=0.2, idle_close_s=1.0, drain_timeout_s=20)
    env.config = dataclasses.replace(env.config, runtime=runtime, rules=rules)
    return env


def test_three_restarts_give_the_same_alerts_as_an_uninterrupted_run(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    reference_env = fast(make_env(moto_endpoint, f"{unique_name}-ref", tmp_path / "ref", shards=2))
    restarted_env = fast(make_env(moto_endpoint, f"{unique_name}-rst", tmp_path / "rst", shards=2))
    records = jittered_records()
    for env in (reference_env, restarted_env):
        # the same records with the same partition keys: the same shards, in the same order
        Producer(env.client("kinesis"), env.resources.stream).send(records)

    reference = reference_env.app()
    run_until(reference.runtime, all_settled(COUNT), timeout=180)
    run_until(reference.runtime, lambda rt: rt.totals.pending_deliveries == 0 and all(
        not s.processor.holds_window_state() for s in rt._shards.values()), timeout=60)  # fmt: skip
    stop(reference.runtime)
    expected = dynamodb_alerts(reference_env)
    by_rule = Counter(a["rule"] for a in expected.values())
    assert by_rule["card_velocity"] > 5 and by_rule["hourly_spend"] > 5, by_rule

    rng = random.Random(5)
    cut_points = sorted(rng.sample(range(2_000, COUNT - 2_000), 3))
    read = 0
    replayed = 0
    for cut in cut_points:
        app = restarted_env.app()
        run_until(
            app.runtime, lambda rt, c=cut, r=read: r + rt.totals.records_read >= c, timeout=180
        )
        stop(app.runtime)  # drain + final checkpoint (with replay_from for window state)
        read += app.runtime.totals.records_read
    final = restarted_env.app()
    run_until(final.runtime, lambda rt: read + rt.totals.records_read >= COUNT, timeout=180)
    run_until(final.runtime, lambda rt: rt.totals.pending_deliveries == 0 and all(
        not s.processor.holds_window_state() for s in rt._shards.values()), timeout=60)  # fmt: skip
    stop(final.runtime)
    replayed = read + final.runtime.totals.records_read - COUNT

    got = dynamodb_alerts(restarted_env)
    assert sorted(got) == sorted(expected)
    assert replayed > 0  # window state really was rebuilt from earlier records
    # Graceful restarts re-send nothing: every destination, deduplicating or not, saw each
    # alert exactly once (a replay that emitted alerts would show up at EventBridge and SNS).
    seen = alert_ids_at_destinations(restarted_env)
    for sink in ("eventbridge", "sqs", "dynamodb"):
        assert sorted(seen[sink]) == sorted(expected), sink
    high = {a for a, v in expected.items() if v["rule"] != "hourly_spend"}  # HIGH severity
    assert sorted(seen["sns"]) == sorted(high)
    # late events were judged the same way: the same records dead-lettered for the same rules
    assert late_letters(restarted_env) == late_letters(reference_env)
    assert len(late_letters(reference_env)) > 0
