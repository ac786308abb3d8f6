"""Reorder thresholds from a DynamoDB table (moto): cached, refreshed, failures keep the old."""

from __future__ import annotations

from typing import Any

from streamproc.inventory import inventory_rule
from streamproc.processor import ShardProcessor
from streamproc.ruleset import RuleSet
from streamproc.thresholds import ThresholdTable
from tests.integration.e2e import create_table
from tests.unit.test_inventory import events, records


def put(ddb: Any, table: str, product: str, threshold: int) -> None:
    ddb.put_item(
        TableName=table,
        Item={"product_id": {"S": product}, "reorder_threshold": {"N": str(threshold)}},
    )


def test_thresholds_come_from_the_table_and_refresh(aws_client: Any, unique_name: str) -> None:
    ddb = aws_client("dynamodb")
    table = f"{unique_name}-thresholds"
    create_table(ddb, table, "product_id")
    put(ddb, table, "sku-1", 20)
    thresholds = ThresholdTable(table, refresh_s=0, client=ddb)  # refreshed by hand here
    rule = inventory_rule(
        name="low_stock", reorder_threshold=thresholds, default_threshold=5, initial_quantity=30
    )
    processor = ShardProcessor(RuleSet((), (), (rule,)), default_sinks=("m",), shard_id="s")
    alerts = processor.process(records(events([-5, -5, -5], "sku-1"))).alerts
    assert [a.fields["current_quantity"] for a in alerts] == [20]  # the table's 20, not 5
    assert rule.threshold("store-1", "sku-unknown") == 5  # not in the table: the default

    put(ddb, table, "sku-1", 12)
    assert thresholds.refresh()
    assert rule.threshold("store-1", "sku-1") == 12
    ddb.delete_table(TableName=table)
    assert not thresholds.refresh()  # the table is gone: keep what we have
    assert thresholds.failures == 1 and rule.threshold("store-1", "sku-1") == 12
