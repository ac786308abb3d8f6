"""The hot path per record: decode alone, our processor with the seed condition rule, and the
same rule as a hand-written loop (the yardstick). Run: make bench (pytest-benchmark).

Each benchmark processes 100,000 seeded transactions; ``extra_info`` gives µs/record. The full
suite (windows, 20 rules, end to end) comes with the benchmark issue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streamproc.processor import ShardProcessor
from streamproc.records import Record, make_alert_id
from streamproc.ruleset import load_rules

ROOT = Path(__file__).resolve().parents[1]


def per_record(benchmark: Any, count: int) -> None:
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["us_per_record"] = round(mean / count * 1e6, 3)
    benchmark.extra_info["records_per_s"] = round(count / mean)


def test_decode_only(benchmark: Any, records: list[Record]) -> None:
    loads = orjson.loads

    def run() -> int:
        n = 0
        for record in records:
            loads(record.data)
            n += 1
        return n

    assert benchmark(run) == len(records)
    per_record(benchmark, len(records))


def test_processor_seed_condition_rule(benchmark: Any, batches: list[list[Record]]) -> None:
    processor = ShardProcessor(load_rules([ROOT / "rules" / "fraud.py"]), default_sinks=("sqs",))

    def run() -> int:
        return sum(len(processor.process(batch).alerts) for batch in batches)

    alerts = benchmark(run)
    assert alerts == hand_written(batches)  # same answer as the yardstick
    per_record(benchmark, sum(map(len, batches)))


def hand_written(batches: list[list[Record]]) -> int:
    loads = orjson.loads
    alerts = []
    for batch in batches:
        for record in batch:
            tx = loads(record.data)
            if tx["amount"] > 2000 and tx["state"] != tx["home_state"]:
                alerts.append(
                    (make_alert_id("high_value_out_of_state", 1, f"tx_id={tx['tx_id']}"), tx)
                )
    return len(alerts)


def test_hand_written_loop(benchmark: Any, batches: list[list[Record]]) -> None:
    alerts = benchmark(hand_written, batches)
    assert alerts > 0
    per_record(benchmark, sum(map(len, batches)))
