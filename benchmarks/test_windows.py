"""Window rules on the hot path: µs/record for the shipped window rules and for each window kind,
and the memory one active key costs (tracemalloc). Each runs over the first 200,000 records of
the data set (20 s of event time, 50,000 cards): enough for every key to hold state."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from benchmarks.summary import report
from streamproc.processor import ShardProcessor
from streamproc.records import Record
from streamproc.ruleset import RuleSet, load_rules, window_rule

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    "tumble_1h_sum": "TUMBLE(event_time, INTERVAL '1' HOUR)",
    "hop_1m_10m_count": "HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '10' MINUTE)",
    "session_30m_count": "SESSION(event_time, INTERVAL '30' MINUTE)",
    "sliding_10m_count": "SLIDING(event_time, INTERVAL '10' MINUTE)",
    # COUNT(*) alone, as velocity rules are: the sliding engine keeps no object per event then.
    "sliding_10m_count_only": "SLIDING(event_time, INTERVAL '10' MINUTE)",
}


WINDOW_RECORDS = 200_000


@pytest.fixture(scope="module")
def window_batches(batches: list[list[Record]]) -> list[list[Record]]:
    return batches[: WINDOW_RECORDS // len(batches[0])]


def kind_rule(name: str, window: str) -> Any:
    select = (
        "COUNT(*) AS n" if name.endswith("count_only") else "COUNT(*) AS n, SUM(amount) AS total"
    )
    return window_rule(
        name=name,
        sql=f"SELECT card_id, {select} FROM transactions "
        f"GROUP BY card_id, {window} HAVING COUNT(*) > 5",
        emit="final" if "sliding" not in name else "early",
    )


def run_all(processor: ShardProcessor, batches: list[list[Record]]) -> int:
    alerts = 0
    for batch in batches:
        result = processor.process(batch)
        if result.dead_letters:
            raise AssertionError(f"dead letters: {result.dead_letters[:3]}")
        alerts += len(result.alerts)
    return alerts + len(processor.flush_windows())


def test_shipped_window_rules(benchmark: Any, window_batches: list[list[Record]]) -> None:
    rules = load_rules([ROOT / "rules" / "velocity.py"])

    def run() -> int:
        return run_all(ShardProcessor(rules, default_sinks=("x",), shard_id="s"), window_batches)

    assert benchmark.pedantic(run, rounds=3, iterations=1) > 0
    report(
        benchmark,
        "rules/velocity.py (2 windows)",
        sum(map(len, window_batches)),
        compare=False,
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_window_kind(benchmark: Any, window_batches: list[list[Record]], kind: str) -> None:
    rules = RuleSet((), window_rules=(kind_rule(kind, KINDS[kind]),))

    def run() -> int:
        return run_all(ShardProcessor(rules, default_sinks=("x",), shard_id="s"), window_batches)

    benchmark.pedantic(run, rounds=3, iterations=1)
    report(benchmark, f"window {kind}", sum(map(len, window_batches)), compare=False)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_memory_per_active_key(
    benchmark: Any, window_batches: list[list[Record]], kind: str
) -> None:
    """Bytes of window state per active key after 200,000 records (50,000 cards)."""
    rules = RuleSet((), window_rules=(kind_rule(kind, KINDS[kind]),))

    def measure() -> tuple[int, int]:
        processor = ShardProcessor(rules, default_sinks=("x",), shard_id="s")
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for batch in window_batches:
            processor.process(batch)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        keys, _items = processor.windows.operators[0].state_size()
        return grown, keys

    grown, keys = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info["active_keys"] = keys
    report(
        benchmark,
        f"window {kind}: state",
        sum(map(len, window_batches)),
        bytes_per_key=grown / max(keys, 1),
        note=f"{keys:,} active keys",
        timed=False,
    )
