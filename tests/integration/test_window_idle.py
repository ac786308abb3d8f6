"""Alerts are never held back by silence: a window whose shard receives nothing more closes
once the shard has been idle for ``runtime.idle_close_s`` (the runtime's clock is driven by the
test, so the deadline is checked exactly, not timed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from streamproc.config import RulesConfig, RuntimeConfig
from tests.integration.e2e import alert_ids_at_destinations, make_env, run_until, stop

RULE = '''
from streamproc import window_rule

daily_spend = window_rule(
    name="daily_spend",
    sql="""SELECT card_id, SUM(amount) AS total FROM transactions
           GROUP BY card_id, TUMBLE(event_time, INTERVAL '1' DAY) HAVING SUM(amount) > 100""",
    emit="final",
)
'''


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_shard_closes_its_windows_at_the_deadline(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path, shards=1)
    (tmp_path / "window_rules").mkdir()
    (tmp_path / "window_rules" / "daily.py").write_text(RULE)
    env.config = dataclasses.replace(
        env.config,
        rules=RulesConfig(paths=(str(tmp_path / "window_rules"),)),
        runtime=RuntimeConfig(checkpoint_interval_s=0.0, idle_close_s=30.0),
    )
    events = [
        {"tx_id": f"t{i}", "card_id": "c1", "amount": 60, "event_time": f"2026-05-01T10:0{i}:00Z"}
        for i in range(3)
    ]
    env.put_raw((orjson.dumps(e), "c1") for e in events)
    app = env.app()
    clock = Clock()
    app.runtime.clock = clock
    run_until(app.runtime, lambda rt: rt.totals.records_read == 3)
    for _ in range(20):
        app.runtime.run_once()
    assert "daily_spend" not in app.runtime.totals.rule_matches  # the day is not over

    clock.now += 29.0  # idle, but not for long enough
    for _ in range(20):
        app.runtime.run_once()
    assert "daily_spend" not in app.runtime.totals.rule_matches

    clock.now += 1.5  # past the deadline: the window closes, its alert goes out
    run_until(app.runtime, lambda rt: rt.totals.sink_outcomes.get("dynamodb", {}).get("sent") == 1)
    assert app.runtime.totals.rule_matches["daily_spend"] == 1
    (alert_id,) = alert_ids_at_destinations(env)["dynamodb"]
    item = env.client("dynamodb").get_item(
        TableName=env.resources.alerts_table, Key={"alert_id": {"S": alert_id}}
    )["Item"]
    payload = orjson.loads(item["payload"]["S"])
    assert payload["fields"] == {"card_id": "c1", "total": 180}
    assert payload["window_start"] == "2026-05-01T00:00:00.000Z"
    assert payload["window_end"] == "2026-05-02T00:00:00.000Z"


def test_an_idle_close_survives_a_restart(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    """After an idle close, a later event for the closed window is late — also after a restart
    (the close is checkpointed and re-applied once the replay reaches the checkpoint), so the
    restarted service neither rebuilds the closed window nor re-sends its alert."""
    env = make_env(moto_endpoint, unique_name, tmp_path, shards=1)
    (tmp_path / "window_rules").mkdir()
    (tmp_path / "window_rules" / "daily.py").write_text(RULE)
    env.config = dataclasses.replace(
        env.config,
        rules=RulesConfig(paths=(str(tmp_path / "window_rules"),)),
        runtime=RuntimeConfig(checkpoint_interval_s=0.0, idle_close_s=30.0),
    )
    events = [
        {"tx_id": f"t{i}", "card_id": "c1", "amount": 60, "event_time": f"2026-05-01T10:0{i}:00Z"}
        for i in range(4)
    ]
    env.put_raw((orjson.dumps(e), "c1") for e in events[:3])
    first = env.app()
    clock = Clock()
    first.runtime.clock = clock
    run_until(first.runtime, lambda rt: rt.totals.records_read == 3)
    clock.now += 31.0
    run_until(
        first.runtime, lambda rt: rt.totals.sink_outcomes.get("dynamodb", {}).get("sent") == 1
    )
    stop(first.runtime)

    env.put_raw([(orjson.dumps(events[3]), "c1")])  # same card, same day: after the close
    second = env.app()
    run_until(second.runtime, lambda rt: rt.totals.records_dead_lettered == 1)
    stop(second.runtime)

    (letter,) = env.dead_letters()
    assert letter["reason"].startswith("late event") and letter["rule"] == "daily_spend"
    assert second.runtime.totals.sink_outcomes == {}  # nothing re-sent
    assert second.runtime.totals.late_events == 1
    seen = alert_ids_at_destinations(env)
    assert len(seen["eventbridge"]) == 1 and len(seen["dynamodb"]) == 1
