"""Windows are exact across restarts: the same stream processed uninterrupted, and processed
with three stop/restart cycles at random points, gives identical alert sets — window state is
rebuilt on restart by replaying from the checkpoint's ``replay_from`` position."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

from streamproc.config import RulesConfig, RuntimeConfig
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
    for env in (reference_env, restarted_env):
        env.produce(COUNT, seed=SEED)  # same partition keys: same records in the same shards

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
    seen = alert_ids_at_destinations(restarted_env)
    assert max(Counter(seen["sqs"]).values()) == 1  # FIFO: no duplicates
    assert sorted(set(seen["sqs"])) == sorted(expected)
