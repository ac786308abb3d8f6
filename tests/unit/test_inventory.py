"""Inventory rules: edge-triggered low-stock alerts, exactly once per crossing across restarts.

Restarts run the real runtime over in-memory sources (tests/unit/memory.py) with an in-memory
state store; the DynamoDB store is exercised in tests/integration/test_inventory.py.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.errors import TransportError
from streamproc.inventory import DETAIL_TYPE, SOURCE, inventory_rule
from streamproc.processor import ShardProcessor
from streamproc.records import Record
from streamproc.ruleset import RuleSet
from streamproc.runtime import Runtime, RuntimeSettings
from streamproc.stateful import StateItem
from tests.unit.memory import MemoryDeadLetter, MemoryReader, MemorySink, MemorySource

SHARD = "shardId-0"
RULE = inventory_rule(
    name="low_stock",
    reorder_threshold=10,
    hysteresis=5,
    initial_quantity=30,
    lead_time_days=2,
    rate_days=7,
)
# Stock of store-1/sku-1 after each event: 25 20 15 10* 7 11 9 29 19 9* 8 ; * = crossing.
DELTAS = [-5, -5, -5, -5, -3, +4, -2, +20, -10, -10, -1]


def events(deltas: list[int], product: str = "sku-1") -> list[dict[str, Any]]:
    return [
        {
            "tx_id": f"{product}-{i}",
            "store_id": "store-1",
            "product_id": product,
            "quantity": delta,
            "event_time": f"2026-01-0{1 + i // 6}T{(i % 6) * 4:02d}:00:00Z",
        }
        for i, delta in enumerate(deltas)
    ]


def records(docs: list[dict[str, Any]], start: int = 100, shard: str = SHARD) -> list[Record]:
    return [
        Record(orjson.dumps(d), d["store_id"], str(start + i), 0, 1_767_225_600_000, shard)
        for i, d in enumerate(docs)
    ]


def processor(shard: str = SHARD) -> ShardProcessor:
    return ShardProcessor(RuleSet((), (), (RULE,)), default_sinks=("memory",), shard_id=shard)


def test_one_alert_per_crossing_rearmed_only_above_threshold_plus_hysteresis() -> None:
    result = processor().process(records(events(DELTAS)))
    assert not result.dead_letters
    quantities = [a.fields["current_quantity"] for a in result.alerts]
    assert quantities == [10, 9]  # not 7, not the 9 before the restock to 29, not 8
    first = result.alerts[0]
    assert first.sequence_number == "103" and result.alerts[1].sequence_number == "109"
    assert (first.event_source, first.detail_type) == (SOURCE, DETAIL_TYPE)
    payload = first.payload()
    for name in (
        "store_id",
        "product_id",
        "current_quantity",
        "reorder_threshold",
        "suggested_order_quantity",
    ):
        assert payload[name] == first.fields[name]  # top level of the EventBridge detail
    assert payload["key"] == {"store_id": "store-1", "product_id": "sku-1"}


def test_suggested_order_covers_the_lead_time_at_the_recent_sales_rate() -> None:
    # Four sales of 5 units, 4 hours apart, before the first crossing: a decayed rate.
    alert = processor().process(records(events(DELTAS[:4]))).alerts[0]
    rate = 0.0
    for i in range(4):
        if i:
            rate *= math.exp(-(4 * 3_600_000) / (7 * 86_400_000))
        rate += 5 / 7
    assert alert.fields["daily_sales_rate"] == round(rate, 3)
    assert alert.fields["suggested_order_quantity"] == math.ceil(rate * 2 + 10 - 10)


def test_products_are_independent() -> None:
    docs = events(DELTAS, "sku-1") + events([-25], "sku-2")
    alerts = processor().process(records(docs)).alerts
    assert [(a.fields["product_id"], a.fields["current_quantity"]) for a in alerts] == [
        ("sku-1", 10),
        ("sku-1", 9),
        ("sku-2", 5),
    ]


class MemoryStateStore:
    """A StateStore in memory, partitioned by owning shard like the DynamoDB one."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str, str], StateItem] = {}
        self.saves = 0

    def load(self, shard_id: str) -> list[StateItem]:
        return [item for (owner, _, _), item in self.items.items() if owner == shard_id]

    def save(self, shard_id: str, items: list[StateItem]) -> None:
        self.saves += 1
        for item in items:
            self.items[(shard_id, item.rule, item.key)] = item


def run(
    recs: list[Record],
    store: MemoryStateStore,
    sink: MemorySink,
    source: MemorySource | None = None,
) -> MemorySource:
    source = source or MemorySource([MemoryReader(SHARD, [recs], closed=False)])
    runtime = Runtime(
        source,
        processor,
        {"memory": sink},
        MemoryDeadLetter(),
        settings=RuntimeSettings(checkpoint_interval_s=0.0, idle_sleep_s=0.0),
        state_store=store,
    )
    for _ in range(5):
        runtime.run_once()
    runtime.stop()
    runtime.drain()
    return source


def test_a_restart_in_the_middle_gives_the_same_alerts_and_stock() -> None:
    recs = records(events([*DELTAS, +30, -25, -5]))
    whole = MemorySink()
    run(recs, MemoryStateStore(), whole)
    store, sink = MemoryStateStore(), MemorySink()
    first = run(recs[:6], store, sink)
    assert first.checkpoints[SHARD][0] == recs[5].position
    run(recs[6:], store, sink)  # a new process: state comes from the store
    assert sink.delivered == whole.delivered
    assert len(whole.delivered) == 3


def test_a_crash_after_the_snapshot_but_before_the_checkpoint_counts_nothing_twice() -> None:
    """The snapshot is written first; if the checkpoint write then fails (the process dies), the
    next run re-reads records the snapshot already counts: they must not move the stock again
    or re-raise a crossing the previous run delivered."""
    recs = records(events(DELTAS))
    whole = MemorySink()
    run(recs, MemoryStateStore(), whole)
    store, sink = MemoryStateStore(), MemorySink()
    failing = MemorySource(
        [MemoryReader(SHARD, [recs[:5]], closed=False)],
        fail_checkpoints=TransportError("lost connection", retryable=True),
    )
    run(recs[:5], store, sink, failing)
    assert SHARD not in failing.checkpoints and store.saves > 0  # snapshot yes, checkpoint no
    run(recs, store, sink)  # everything is read again from the start
    assert sink.delivered == whole.delivered  # the crossing before the crash is not re-raised
    value = store.items[(SHARD, "low_stock", "store-1\x1fsku-1")].value
    assert value["q"] == 8  # 30 + sum(DELTAS), each record counted once


def test_a_child_shard_continues_from_its_parents_stock_after_a_reshard() -> None:
    docs = events([*DELTAS, +30, -25, -5])
    whole = MemorySink()
    run(records(docs), MemoryStateStore(), whole)
    store, sink = MemoryStateStore(), MemorySink()
    parent = MemoryReader(SHARD, [records(docs[:6])], closed=True)  # split after 6 events
    run([], store, sink, MemorySource([parent]))
    child = MemoryReader("shardId-1", [records(docs[6:], start=500, shard="shardId-1")])
    child.parents = (SHARD,)  # type: ignore[attr-defined]
    run([], store, sink, MemorySource([child], handed_out=False))
    assert sink.delivered == whole.delivered  # same crossings, same alert ids
    child_stock = store.items[("shardId-1", "low_stock", "store-1\x1fsku-1")]
    assert child_stock.shard_id == "shardId-1" and child_stock.value["q"] == 8


def test_a_grandchild_inherits_stock_its_parent_never_touched() -> None:
    """Second reshard: the child saw no event of sku-1, but stores what it inherited, so the
    grandchild continues sku-1 from the grandparent's stock."""
    store, sink = MemoryStateStore(), MemorySink()
    docs = events(DELTAS)
    grandparent = MemoryReader(SHARD, [records(docs[:3])], closed=True)  # sku-1: 30 -> 15
    run([], store, sink, MemorySource([grandparent]))
    child = MemoryReader("shardId-1", [records(events([-1], "sku-2"), 300, "shardId-1")])
    child.parents = (SHARD,)  # type: ignore[attr-defined]
    run([], store, sink, MemorySource([child]))
    grandchild = MemoryReader("shardId-2", [records(docs[3:], 400, "shardId-2")], closed=False)
    grandchild.parents = ("shardId-1",)  # type: ignore[attr-defined]
    run([], store, sink, MemorySource([grandchild]))
    whole = MemorySink()
    run(records(docs), MemoryStateStore(), whole)
    sku1 = [a for a in sink.delivered if a in set(whole.delivered)]
    assert sku1 == whole.delivered  # both sku-1 crossings, with the same ids


def test_a_throttled_state_load_delays_the_shard_instead_of_stopping_the_service() -> None:
    class Flaky(MemoryStateStore):
        def __init__(self) -> None:
            super().__init__()
            self.failures = 2

        def load(self, shard_id: str) -> list[StateItem]:
            if self.failures:
                self.failures -= 1
                raise TransportError("ProvisionedThroughputExceededException", retryable=True)
            return super().load(shard_id)

    now = [0.0]
    store, sink = Flaky(), MemorySink()
    runtime = Runtime(
        MemorySource([MemoryReader(SHARD, [records(events(DELTAS))], closed=False)]),
        processor,
        {"memory": sink},
        MemoryDeadLetter(),
        settings=RuntimeSettings(checkpoint_interval_s=0.0, idle_sleep_s=0.0),
        clock=lambda: now[0],
        state_store=store,
    )
    runtime.run_once()
    assert runtime.totals.shards_active == 0 and store.failures == 1
    runtime.run_once()  # not yet: retried after a second
    assert store.failures == 1
    for _ in range(3):
        now[0] += 1.0
        runtime.run_once()
    assert store.failures == 0 and runtime.totals.shards_active == 1
    assert len(sink.delivered) == 2


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=8),
    products=st.lists(st.sampled_from(["sku-1", "sku-2", "sku-3"]), min_size=96, max_size=96),
    deltas=st.lists(st.integers(-9, 9), min_size=96, max_size=96),
    commits=st.sets(st.integers(0, 7)),
)
def test_snapshots_at_batch_ends_hold_each_changed_product_as_of_that_end(
    sizes: list[int], products: list[str], deltas: list[int], commits: set[int]
) -> None:
    """Snapshot at the end of every batch (committing after some): each product changed since
    the last commit, with the stock it had at that end, stamped at or after its last record
    there; nothing else. Ends of batches that changed nothing count too."""
    shard = processor()
    docs = [
        {**doc, "product_id": product}
        for doc, product in zip(events(deltas), products, strict=True)
    ]
    for i, doc in enumerate(docs):  # event times in order, an hour apart
        doc["event_time"] = f"2026-01-{1 + i // 24:02d}T{i % 24:02d}:00:00Z"
    stream = records(docs)
    model: dict[str, float] = {}
    last_of: dict[str, int] = {}  # product -> sequence number of its last record
    since_commit: set[str] = set()
    start = 0
    for index, size in enumerate(sizes):
        batch = stream[start : start + size]
        start += size
        shard.process(batch)
        for record in batch:
            doc = orjson.loads(record.data)
            model[doc["product_id"]] = model.get(doc["product_id"], 30.0) + doc["quantity"]
            last_of[doc["product_id"]] = int(record.sequence_number)
            since_commit.add(doc["product_id"])
        end = batch[-1].position if batch else stream[max(start - 1, 0)].position
        items = shard.snapshot(end) if start else []
        got = {item.key.split("\x1f")[1]: item for item in items}
        assert set(got) == (since_commit if start else set())
        for product, item in got.items():
            assert item.value["q"] == model[product]
            assert last_of[product] <= item.position.sequence_number <= end.sequence_number
        if index in commits and start:
            shard.commit_snapshot(end)
            since_commit.clear()


def test_a_snapshot_inside_a_batch_is_refused() -> None:
    """Stock is kept per batch: a position between two records of one batch cannot be
    snapshotted (the runtime only checkpoints batch ends), and saying so beats a wrong value."""
    shard = processor()
    stream = records(events(DELTAS))
    shard.process(stream[:4])
    shard.process(stream[4:])
    assert [item.value["q"] for item in shard.snapshot(stream[3].position)] == [10.0]
    with pytest.raises(ValueError, match="snapshot at a batch end"):
        shard.snapshot(stream[5].position)
    assert [item.value["q"] for item in shard.snapshot(stream[-1].position)] == [8.0]
