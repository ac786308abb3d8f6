"""The runtime loop's own logic, against in-memory sources and sinks (see memory.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproc.errors import TransportError
from streamproc.processor import ShardProcessor
from streamproc.records import Position, Record
from streamproc.ruleset import RuleSet, rule
from streamproc.runtime import Runtime, RuntimeSettings
from tests.unit.memory import MemoryDeadLetter, MemoryReader, MemorySink, MemorySource

RULE = rule(name="big", version=1, condition="amount > 100", key="card_id")


def records(shard: str, start: int, amounts: list[Any]) -> list[Record]:
    out = []
    for i, amount in enumerate(amounts):
        seq = start + i
        data = orjson.dumps({"tx_id": f"{shard}-{seq}", "card_id": "c", "amount": amount})
        if amount == "bad":
            data = b"{bad json"
        out.append(Record(data, "pk", str(seq), 0, 0, shard))
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    source: MemorySource,
    sink: MemorySink,
    dead: MemoryDeadLetter,
    clock: Clock | None = None,
    **settings: Any,
) -> Runtime:
    defaults: dict[str, Any] = {"checkpoint_interval_s": 0.0, "idle_sleep_s": 0.0}
    return Runtime(
        source,
        lambda _shard: ShardProcessor(RuleSet((RULE,)), default_sinks=(sink.name,)),
        {sink.name: sink},
        dead,
        settings=RuntimeSettings(**{**defaults, **settings}),
        **({"clock": clock} if clock is not None else {}),
    )


def test_a_closed_shard_whose_last_batch_fails_is_not_marked_ended() -> None:
    """Processing the final page raises (here: a sink refuses add()); the shard must keep its
    last settled checkpoint and never be marked ended, or its children would be read and the
    final page's alerts lost."""
    reader = MemoryReader("s-0", [records("s-0", 1, [5, 500]), records("s-0", 3, [700])])
    source = MemorySource([reader])
    sink = MemorySink()
    runtime = make(source, sink, MemoryDeadLetter())
    runtime.run_once()  # first page: settled and checkpointed
    assert source.checkpoints == {"s-0": (Position(2), False)}
    sink.raise_on_add = RuntimeError("sink bug")
    with pytest.raises(RuntimeError, match="sink bug"):
        runtime.run()
    assert reader.finished  # the reader did reach the end...
    assert source.checkpoints == {"s-0": (Position(2), False)}  # ...but the shard is not ended


def test_a_closed_shard_is_marked_ended_once_its_last_alert_is_delivered() -> None:
    reader = MemoryReader("s-0", [records("s-0", 1, [500, 5])])
    source = MemorySource([reader])
    sink = MemorySink(accepting=False)
    runtime = make(source, sink, MemoryDeadLetter())
    for _ in range(5):
        runtime.run_once()
    assert source.checkpoints.get("s-0") is None  # the alert is not acknowledged yet
    sink.accepting = True
    runtime.run_once()
    assert source.checkpoints == {"s-0": (Position(2), True)}
    assert runtime.totals.shards_ended == 1


def test_dead_letter_outage_backs_off_and_holds_the_checkpoint() -> None:
    clock = Clock()
    reader = MemoryReader("s-0", [records("s-0", 1, ["bad", 500])], closed=False)
    source = MemorySource([reader])
    dead = MemoryDeadLetter(failures_left=3)
    runtime = make(source, MemorySink(), dead)
    runtime.clock = clock
    for _ in range(100):  # many turns at the same instant: one park attempt, then backoff
        runtime.run_once()
    assert dead.calls == 1
    assert "s-0" not in source.checkpoints  # the bad record is not parked: no checkpoint past it
    for _ in range(3):
        clock.now += 60
        runtime.run_once()
    assert dead.calls == 4
    assert [d.sequence_number for d in dead.parked] == ["1"]
    assert source.checkpoints["s-0"] == (Position(2), False)


def test_backpressure_stops_reading_while_records_or_bytes_are_unsettled() -> None:
    pages = [records("s-0", 1 + 10 * i, [500] * 10) for i in range(5)]
    size = len(pages[0][0].data)
    reader = MemoryReader("s-0", pages, closed=False)
    sink = MemorySink(accepting=False)
    runtime = make(MemorySource([reader]), sink, MemoryDeadLetter(), max_inflight_records=20)
    for _ in range(10):
        runtime.run_once()
    assert runtime.totals.records_read == 20  # two pages, then the shard waits
    sink.accepting = True
    for _ in range(10):
        runtime.run_once()
    assert runtime.totals.records_read == 50

    reader = MemoryReader("s-1", [records("s-1", 1, [500] * 10) for _ in range(3)], closed=False)
    sink = MemorySink(accepting=False)
    runtime = make(MemorySource([reader]), sink, MemoryDeadLetter(), max_inflight_bytes=size * 5)
    for _ in range(10):
        runtime.run_once()
    assert runtime.totals.records_read == 10  # one page exceeds the byte budget: stop there


def test_checkpoint_lag_counts_records_not_covered_by_a_stored_checkpoint() -> None:
    reader = MemoryReader("s-0", [records("s-0", 1, [5, 6, 7])], closed=False)
    source = MemorySource([reader], fail_checkpoints=TransportError("throttled", retryable=True))
    clock = Clock()
    runtime = make(source, MemorySink(), MemoryDeadLetter(), clock)
    for _ in range(3):
        runtime.run_once()
    assert runtime.totals.checkpoint_lag_records == {"s-0": 3}  # settled, but not stored
    assert runtime.totals.checkpoint_failures == 1  # then backing off: not hammering the store
    source.fail_checkpoints = None
    runtime.run_once()
    assert runtime.totals.checkpoint_lag_records == {"s-0": 3}  # still backing off (0.2 s)
    clock.now += 0.2
    runtime.run_once()
    assert runtime.totals.checkpoint_lag_records == {"s-0": 0}


def test_a_non_retryable_checkpoint_failure_stops_the_service() -> None:
    reader = MemoryReader("s-0", [records("s-0", 1, [5])], closed=False)
    source = MemorySource(
        [reader], fail_checkpoints=TransportError("table does not exist", retryable=False)
    )
    runtime = make(source, MemorySink(), MemoryDeadLetter())
    with pytest.raises(TransportError, match="table does not exist"):
        runtime.run(duration=5)


def test_a_closed_shard_closes_its_open_windows_before_it_is_marked_ended() -> None:
    """A parent shard after a reshard gets no more records: its open windows must close (and
    their alerts be delivered) before the shard is checkpointed as ended, not vanish."""
    from streamproc.ruleset import window_rule

    daily = window_rule(
        name="daily",
        sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
        "TUMBLE(event_time, INTERVAL '1' DAY) HAVING COUNT(*) >= 2",
    )
    batch = [
        Record(
            orjson.dumps(
                {
                    "tx_id": f"t{i}",
                    "card_id": "c",
                    "amount": 1,
                    "event_time": f"2026-01-01T00:0{i}:00Z",
                }
            ),
            "pk",
            str(i + 1),
            0,
            0,
            "s-0",
        )
        for i in range(3)
    ]
    reader = MemoryReader("s-0", [batch])
    source = MemorySource([reader])
    sink = MemorySink()
    runtime = Runtime(
        source,
        lambda shard: ShardProcessor(
            RuleSet((), window_rules=(daily,)), default_sinks=("memory",), shard_id=shard
        ),
        {"memory": sink},
        MemoryDeadLetter(),
        settings=RuntimeSettings(checkpoint_interval_s=0.0, idle_sleep_s=0.0, idle_close_s=1e9),
    )
    for _ in range(5):
        runtime.run_once()
    assert len(sink.delivered) == 1
    assert runtime.totals.rule_matches == {"daily": 1}
    assert source.checkpoints == {"s-0": (Position(3), True)}
