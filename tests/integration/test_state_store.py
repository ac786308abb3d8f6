"""The DynamoDB state store (moto): items per owning shard; a stale writer cannot undo a newer
snapshot (a worker that lost its lease but has not noticed yet still saves)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from connectors.state import SAVE_THREADS, DynamoDbStateStore
from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION
from streamproc.errors import TransportError
from streamproc.records import Position
from streamproc.stateful import StateItem
from tests.integration.e2e import _Body, create_table


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


def items_at(seq: str, count: int, q: int, shard: str = "shardId-1") -> list[StateItem]:
    """``count`` products' items, all counted up to ``seq``."""
    return [
        StateItem("low_stock", f"store-1\x1fsku-{n:04d}", {"q": q}, shard, Position.of(seq))
        for n in range(count)
    ]


def test_a_large_save_writes_every_item_and_still_refuses_stale_ones(
    aws_client: Any, unique_name: str
) -> None:
    """A checkpoint's snapshot holds thousands of products: the items are written by several
    threads at once, each on its own condition. A newer owner's items survive an old owner's
    late save of the same products, whichever thread writes which."""
    ddb = aws_client("dynamodb")
    table = f"{unique_name}-state"
    create_table(ddb, table, "shard", "item")
    store = DynamoDbStateStore(ddb, table, "payments")
    inflight = [0, 0]  # requests being sent now, and the most at once
    lock = threading.Lock()

    def before_send(**_: Any) -> None:
        with lock:
            inflight[0] += 1
            inflight[1] = max(inflight)
        time.sleep(0.005)  # a round trip's latency, which the writers overlap
        with lock:
            inflight[0] -= 1

    ddb.meta.events.register("before-send.dynamodb.PutItem", before_send)
    store.save("shardId-1", items_at("900", 150, 20))  # the new owner, further along
    assert 1 < inflight[1] <= SAVE_THREADS
    store.save("shardId-1", items_at("100", 300, 25))  # the old owner: half are refused
    loaded = {i.key: (i.value["q"], i.position) for i in store.load("shardId-1")}
    assert len(loaded) == 300
    assert {loaded[f"store-1\x1fsku-{n:04d}"] for n in range(150)} == {(20, Position.of("900"))}
    assert {loaded[f"store-1\x1fsku-{n:04d}"] for n in range(150, 300)} == {
        (25, Position.of("100"))
    }


def test_a_failed_write_stops_the_save_and_saving_again_completes_it(
    moto_endpoint: str, unique_name: str
) -> None:
    """One product's write fails (a ``before-send`` hook answers its PutItem with a 500, as
    DynamoDB may; moto cannot be made to): the save stops its other writers and raises a
    retryable TransportError, having written only part of the items. The runtime then saves
    again at a later checkpoint: this time every item is there."""
    ddb = boto3.client(
        "dynamodb",
        region_name=LOCAL_REGION,
        endpoint_url=moto_endpoint,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        **LOCAL_CREDENTIALS,
    )
    table = f"{unique_name}-state"
    create_table(ddb, table, "shard", "item")
    store = DynamoDbStateStore(ddb, table, "payments")
    poisoned = {"low_stock/store-1\x1fsku-0003"}
    sent: list[str] = []
    lock = threading.Lock()

    def before_send(request: Any, **_: Any) -> AWSResponse | None:
        key = json.loads(request.body)["Item"]["item"]["S"]
        with lock:
            sent.append(key)
        if key in poisoned:
            body = json.dumps({"__type": "InternalServerError", "message": "injected"})
            headers = {"Content-Type": "application/x-amz-json-1.0"}
            return AWSResponse("https://injected.invalid/", 500, headers, _Body(body.encode()))
        return None

    ddb.meta.events.register("before-send.dynamodb.PutItem", before_send)
    items = items_at("900", 800, 7)
    with pytest.raises(TransportError, match="cannot save rule state of shardId-1") as caught:
        store.save("shardId-1", items)
    assert caught.value.retryable
    assert len(sent) < len(items)  # the other writers stopped
    assert len(store.load("shardId-1")) < len(items)
    poisoned.clear()
    store.save("shardId-1", items)
    loaded = store.load("shardId-1")
    assert len(loaded) == len(items)
    assert {(i.value["q"], i.position) for i in loaded} == {(7, Position.of("900"))}
