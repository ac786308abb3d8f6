"""The DynamoDB state store (moto): items per owning shard; a stale writer cannot undo a newer
snapshot (a worker that lost its lease but has not noticed yet still saves)."""

from __future__ import annotations

from typing import Any

from connectors.state import DynamoDbStateStore
from streamproc.records import Position
from streamproc.stateful import StateItem
from tests.integration.e2e import create_table


def test_a_stale_save_never_replaces_a_newer_value(aws_client: Any, unique_name: str) -> None:
    ddb = aws_client("dynamodb")
    table = f"{unique_name}-state"
    create_table(ddb, table, "shard", "item")
    store = DynamoDbStateStore(ddb, table, "payments")

    def item(q: int, seq: str, shard: str = "shardId-1") -> StateItem:
        return StateItem("low_stock", "store-1\x1fsku-1", {"q": q}, shard, Position.of(seq))

    store.save("shardId-1", [item(20, "900")])  # the new owner, further along
    store.save("shardId-1", [item(25, "100")])  # the old owner's late save: refused
    store.save("shardId-1", [item(20, "900")])  # repeating a save is harmless
    assert [(i.value["q"], i.position) for i in store.load("shardId-1")] == [
        (20, Position.of("900"))
    ]
    # An item inherited from a parent (another shard's positions) is replaced by the owner's.
    store.save("shardId-2", [item(15, "700", "shardId-1")])
    store.save("shardId-2", [item(12, "5", "shardId-2")])
    loaded = store.load("shardId-2")
    assert [(i.value["q"], i.shard_id) for i in loaded] == [(12, "shardId-2")]
    assert store.load("shardId-9") == []
