"""What a checkpoint costs a shard with an inventory rule: the snapshot, then its save.

At every checkpoint (``runtime.checkpoint_interval_s``, 2 s by default) the runtime takes a
snapshot of the products that changed since the last one and writes it to the state table
before it writes the checkpoint; the shard's loop waits for both. At full speed that is tens of
thousands of products.

- **Snapshot:** the seed inventory rule over the data set's first 200,000 records (about
  180,000 products changed), then ``ShardProcessor.snapshot`` at the last record: µs per item.
- **Save:** 500 items to moto's DynamoDB in this process (a shard at Kinesis's 1,000
  records/s changes about 2,000 products between two checkpoints): moto alone, one request at
  a time; then with a 5 ms round trip added to every request by a ``before-send`` hook (what
  moto, in this process, does not have), one request at a time (``SAVE_THREADS`` = 1, as
  before 2026-12-07) and as shipped. Each conditional write costs moto itself several ms of
  this process's CPU, which threads cannot overlap (one GIL): the shipped row shows the
  round trip hidden, and moto's own time is then the limit. Against DynamoDB, whose work is
  elsewhere, the threads divide the round trips by their number.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from benchmarks.summary import report
from connectors import state
from connectors.state import DynamoDbStateStore
from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION, MotoServer
from streamproc.processor import ShardProcessor
from streamproc.records import Position, Record
from streamproc.ruleset import RuleSet, load_rules
from streamproc.stateful import StateItem
from tests.integration.e2e import create_table

pytestmark = pytest.mark.timeout(600)
SEED = Path(__file__).resolve().parent / "rulesets" / "seed.py"
SHARD = "shardId-000000000000"
SNAPSHOT_RECORDS = 200_000
SAVE_ITEMS = 500


def test_inventory_snapshot(benchmark: Any, batches: list[list[Record]]) -> None:
    rules = load_rules([SEED])
    head = batches[: SNAPSHOT_RECORDS // len(batches[0])]
    processor = ShardProcessor(
        RuleSet((), stateful_rules=rules.stateful_rules),
        default_sinks=("sqs",),
        shard_id=head[0][0].shard_id,
    )
    for batch in head:
        processor.process(batch)
    through = head[-1][-1].position
    items = benchmark.pedantic(processor.snapshot, args=(through,), rounds=3, iterations=1)
    assert len(items) == processor.state_keys()[0][1] > SNAPSHOT_RECORDS // 2
    report(
        benchmark,
        "inventory snapshot at a checkpoint, per changed product",
        len(items),
        note=f"{len(items):,} products changed by {sum(map(len, head)):,} records",
        compare=False,
    )


@pytest.mark.parametrize(("round_trip_ms", "threads"), [(0, 1), (5, 1), (5, state.SAVE_THREADS)])
def test_state_save(
    benchmark: Any,
    moto: MotoServer,
    round_trip_ms: int,
    threads: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ddb = boto3.client(
        "dynamodb", region_name=LOCAL_REGION, endpoint_url=moto.endpoint_url, **LOCAL_CREDENTIALS
    )
    table = f"state-{round_trip_ms}-{threads}"
    create_table(ddb, table, "shard", "item")

    def round_trip(**_: Any) -> None:
        time.sleep(round_trip_ms / 1000)  # the network moto does not have; the GIL is released

    if round_trip_ms:
        ddb.meta.events.register("before-send.dynamodb.PutItem", round_trip)
    monkeypatch.setattr(state, "SAVE_THREADS", threads)
    store = DynamoDbStateStore(ddb, table, "transactions")
    rounds = iter(range(100))

    def items() -> tuple[tuple[str, list[StateItem]], dict[str, Any]]:
        at = Position(1_000 + next(rounds), 0)  # each round further along: all written
        return (
            SHARD,
            [
                StateItem("low_stock", f"store-{n % 500:04d}\x1fsku-{n:05d}", {"q": 7}, SHARD, at)
                for n in range(SAVE_ITEMS)
            ],
        ), {}

    benchmark.pedantic(store.save, setup=items, rounds=3, iterations=1)
    assert len(store.load(SHARD)) == SAVE_ITEMS
    report(
        benchmark,
        f"state save, {round_trip_ms} ms round trip added, "
        + ("one request at a time" if threads == 1 else f"{threads} threads"),
        SAVE_ITEMS,
        note=f"{SAVE_ITEMS:,} items to moto's DynamoDB",
        compare=False,
    )
