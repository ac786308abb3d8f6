"""Inventory alerts end to end on moto: EventBridge events with source ``inventory.system`` and
detail-type ``Low Inventory Alert``; exactly one per crossing across a restart, with the
stock snapshots in the DynamoDB state table."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import orjson

from streamproc.config import InventoryTableSinkConfig
from tests.integration.e2e import (
    all_settled,
    create_table,
    make_env,
    receive_all,
    run_until,
    stop,
)

INVENTORY_RULE = """
from streamproc import inventory_rule

low_stock = inventory_rule(
    name="low_stock",
    reorder_threshold=10,
    hysteresis=5,
    initial_quantity=30,
    lead_time_days=2,
    sinks=["eventbridge"],
)
"""
# Stock per product: 25 20 15 10* 7 11 9 29 19 9* 8 38 13 8*  (* = a crossing: an alert)
DELTAS = [-5, -5, -5, -5, -3, +4, -2, +20, -10, -10, -1, +30, -25, -5]


def events(store: str, product: str) -> list[dict[str, Any]]:
    return [
        {
            "tx_id": f"{store}-{product}-{i}",
            "store_id": store,
            "product_id": product,
            "quantity": delta,
            "event_time": f"2026-01-01T{i:02d}:00:00Z",
            # the fields the shipped condition rule reads (no alert from it)
            "amount": 1.0,
            "state": "NY",
            "home_state": "NY",
        }
        for i, delta in enumerate(DELTAS)
    ]


def test_low_stock_alerts_reach_eventbridge_once_per_crossing_across_a_restart(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    env = make_env(moto_endpoint, unique_name, tmp_path, extra_rules=INVENTORY_RULE, shards=2)
    sqs, bridge = env.client("sqs"), env.client("events")
    inbox = sqs.create_queue(QueueName=f"{unique_name}-inventory")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    bus = env.config.sinks.eventbridge.bus_name
    bridge.put_rule(
        Name=f"{unique_name}-low-stock",
        EventBusName=bus,
        EventPattern=json.dumps(
            {"source": ["inventory.system"], "detail-type": ["Low Inventory Alert"]}
        ),
    )
    bridge.put_targets(
        Rule=f"{unique_name}-low-stock", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}]
    )
    streams = [events("store-1", "sku-1"), events("store-2", "sku-9")]
    # Partitioned by store: all events of a product in one shard, in order.
    half = len(DELTAS) // 2
    first = [(orjson.dumps(e), e["store_id"]) for s in streams for e in s[:half]]
    second = [(orjson.dumps(e), e["store_id"]) for s in streams for e in s[half:]]

    env.put_raw(first)
    app = env.app()
    run_until(app.runtime, all_settled(len(first)))
    stop(app.runtime)
    env.put_raw(second)
    app = env.app()  # a new runtime: the stock comes from the state table
    run_until(app.runtime, all_settled(len(second)))
    stop(app.runtime)

    received = receive_all(sqs, inbox)
    assert all(e["source"] == "inventory.system" for e in received)
    assert all(e["detail-type"] == "Low Inventory Alert" for e in received)
    details = sorted(
        (e["detail"]["store_id"], e["detail"]["product_id"], e["detail"]["current_quantity"])
        for e in received
    )
    assert details == [("store-1", "sku-1", q) for q in (8, 9, 10)] + [
        ("store-2", "sku-9", q) for q in (8, 9, 10)
    ]
    for event in received:
        detail = event["detail"]
        assert detail["reorder_threshold"] == 10
        assert isinstance(detail["suggested_order_quantity"], int)  # formula: unit tests
        assert detail["rule"] == "low_stock"
    state = env.client("dynamodb").scan(TableName=env.config.source.state_table)["Items"]
    stock = {
        i["item"]["S"]: orjson.loads(i["value"]["S"])["q"]
        for i in state
        if i["shard"]["S"].startswith(env.config.source.stream + "/")
    }
    assert stock == {"low_stock/store-1\x1fsku-1": 8, "low_stock/store-2\x1fsku-9": 8}


STOCK_RULE = """
from streamproc import inventory_rule

low_stock = inventory_rule(
    name="low_stock",
    reorder_threshold=10,
    initial_quantity=30,
    sinks=["dynamodb"],
    stock_sink="inventory_table",
)
"""


def test_replaying_records_does_not_double_the_inventory_table(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    """Every event adds its quantity to the product's item once: reading the whole stream again
    (here: a second application with fresh checkpoints, the worst case of a replay) changes
    nothing in the table, because each update is a transaction with a per-event marker."""
    env = make_env(moto_endpoint, unique_name, tmp_path, extra_rules=STOCK_RULE, shards=2)
    ddb = env.client("dynamodb")
    table = f"{unique_name}-inventory"
    create_table(ddb, table, "store_id", "product_id")
    sinks = dataclasses.replace(
        env.config.sinks,
        inventory_table=InventoryTableSinkConfig(enabled=True, table=table),
    )
    env.config = dataclasses.replace(env.config, sinks=sinks)
    records = [(orjson.dumps(e), e["store_id"]) for e in events("store-3", "sku-5")]
    env.put_raw(records)

    def quantity() -> float:
        item = ddb.get_item(
            TableName=table, Key={"store_id": {"S": "store-3"}, "product_id": {"S": "sku-5"}}
        )["Item"]
        return float(item["current_quantity"]["N"])

    app = env.app()
    run_until(app.runtime, all_settled(len(records)))
    stop(app.runtime)
    assert quantity() == sum(DELTAS)
    assert app.runtime.totals.sink_outcomes["inventory_table"] == {"sent": len(DELTAS)}

    # Read everything again, as after losing the checkpoints (and the rule state) entirely.
    fresh = dataclasses.replace(
        env.config.source,
        checkpoint_table=f"{unique_name}-checkpoints-2",
        state_table=f"{unique_name}-state-2",
    )
    create_table(ddb, fresh.checkpoint_table, "stream", "shard_id")
    create_table(ddb, fresh.state_table, "shard", "item")
    env.config = dataclasses.replace(env.config, source=fresh)
    again = env.app()
    run_until(again.runtime, all_settled(len(records)))
    stop(again.runtime)
    assert again.runtime.totals.sink_outcomes["inventory_table"] == {"duplicate": len(DELTAS)}
    assert quantity() == sum(DELTAS)


def test_a_transaction_conflict_is_retried_not_parked(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    """DynamoDB cancels a transaction that conflicts with another on the same item; moto never
    does, so a botocore before-send hook answers the first two TransactWriteItems calls with
    that cancellation. The updates are retried and counted once each; nothing is parked."""
    from botocore.awsrequest import AWSResponse

    from connectors.inventory_table import InventoryTableSink
    from streamproc.interfaces import Delivery
    from streamproc.records import Alert
    from tests.integration.e2e import _Body
    from tests.unit.memory import MemoryDeadLetter

    ddb = make_env(moto_endpoint, unique_name, tmp_path).client("dynamodb")
    table = f"{unique_name}-inventory"
    create_table(ddb, table, "store_id", "product_id")
    conflicts = [2]

    def conflict(**_: Any) -> AWSResponse | None:
        if conflicts[0] == 0:
            return None
        conflicts[0] -= 1
        body = {
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "message": "Transaction cancelled (injected)",
            "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}],
        }
        headers = {"Content-Type": "application/x-amz-json-1.0"}
        return AWSResponse("https://injected.invalid/", 400, headers, _Body(orjson.dumps(body)))

    ddb.meta.events.register("before-send.dynamodb.TransactWriteItems", conflict)
    dead = MemoryDeadLetter()
    sink = InventoryTableSink(ddb, table=table, dead_letter=dead, backoff_base=0.01)
    for i, delta in enumerate((-3, -4)):
        alert = Alert(
            alert_id=f"event-{i}",
            rule="low_stock:stock",
            rule_version=1,
            severity="LOW",
            key="store-1/sku-1",
            fields={"store_id": "store-1", "product_id": "sku-1", "quantity_delta": delta},
            sinks=("inventory_table",),
            shard_id="s",
            sequence_number=str(i),
        )
        sink.add(Delivery(i, alert))
    outcomes = []
    for _ in range(200):
        outcomes += sink.flush(force=True)
        if not sink.pending():
            break
        time.sleep(0.01)
    sink.close()
    assert sorted(o.status for o in outcomes) == ["sent", "sent"] and not dead.parked
    item = ddb.get_item(
        TableName=table, Key={"store_id": {"S": "store-1"}, "product_id": {"S": "sku-1"}}
    )["Item"]
    assert item["current_quantity"]["N"] == "-7"
