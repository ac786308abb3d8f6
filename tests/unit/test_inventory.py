"""Inventory rules: edge-triggered low-stock alerts, exactly once per crossing across restarts.

Restarts run the real runtime over in-memory sources (tests/unit/memory.py) with an in-memory
state store; the DynamoDB store is exercised in tests/integration/test_inventory.py.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.errors import TransportError
from streamproc.inventory import _CHUNK, DETAIL_TYPE, SOURCE, _History, inventory_rule
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


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(0, 3 * _CHUNK + 5),
    cuts=st.lists(st.integers(-1, 3 * _CHUNK + 6), max_size=4),
)
def test_the_history_keeps_record_order_across_chunks_and_drops_from_the_front(
    count: int, cuts: list[int]
) -> None:
    """The per-record history is stored in chunks; it must read back like one list, and
    dropping through a position must drop exactly the entries at or before it."""
    history = _History()
    model = []
    for n in range(count):
        entry = (("store", f"p{n}"), (n, 0), (float(n), True, 0.0, None))
        history.append(entry)
        model.append(entry)
    for cut in sorted(cuts):
        history.drop_through((cut, 0))
        model = [entry for entry in model if entry[1] > (cut, 0)]
        assert list(history.entries()) == model
    extra = (("store", "late"), (10**6, 0), (1.0, False, 0.0, None))
    history.append(extra)
    assert list(history.entries()) == [*model, extra]
