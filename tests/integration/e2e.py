"""Helpers for end-to-end tests: a provisioned environment on the shared moto server."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from botocore.awsrequest import AWSResponse

from streamproc.app import App, build_app
from streamproc.config import (
    Config,
    DeadLetterConfig,
    DynamoDbSinkConfig,
    LimitsConfig,
    MetricsConfig,
    RulesConfig,
    RuntimeConfig,
    SinksConfig,
    SourceConfig,
)
from streamproc.demo import DemoSpec, Producer, encode, transactions
from streamproc.local import LocalResources, provision
from streamproc.records import make_alert_id
from streamproc.runtime import Runtime


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data

    def read(self) -> bytes:
        return self.data


def throttled() -> AWSResponse:
    """An SQS throttling error as the wire carries it, for a botocore ``before-send`` hook to
    return (moto never throttles)."""
    body = json.dumps({"__type": "AWS.SimpleQueueService.RequestThrottled", "message": "injected"})
    headers = {"Content-Type": "application/x-amz-json-1.0"}
    return AWSResponse("https://injected.invalid/", 400, headers, _Body(body.encode()))


ROOT = Path(__file__).resolve().parents[2]
SMALL_PURCHASE_RULE = """
from streamproc import rule

small_purchase = rule(
    name="small_purchase",
    version=1,
    condition="amount < 5",
    select=["tx_id", "amount"],
    key="card_id",
    severity="LOW",
)
"""


@dataclass
class Env:
    config: Config
    resources: LocalResources
    tmp: Path

    def client(self, service: str) -> Any:
        return self.resources.client(service)

    def app(self, **runtime: Any) -> App:
        config = self.config
        if runtime:
            config = dataclasses.replace(
                config, runtime=dataclasses.replace(config.runtime, **runtime)
            )
        return build_app(config, local=True, serve_metrics=False)

    def produce(self, count: int, seed: int) -> list[dict[str, Any]]:
        txs = list(transactions(DemoSpec(seed=seed), count))
        Producer(self.client("kinesis"), self.resources.stream).send(encode(t) for t in txs)
        return txs

    def put_raw(self, records: Iterable[tuple[bytes, str]]) -> list[str]:
        """PutRecords in order (one call per record keeps order); returns sequence numbers."""
        kinesis = self.client("kinesis")
        out = []
        for data, key in records:
            response = kinesis.put_record(
                StreamName=self.resources.stream, Data=data, PartitionKey=key
            )
            out.append(response["SequenceNumber"])
        return out

    def dead_letters(self) -> list[dict[str, Any]]:
        path = Path(self.config.dead_letter.path)
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def make_env(
    endpoint: str,
    name: str,
    tmp: Path,
    *,
    extra_rules: str | None = None,
    limits: LimitsConfig | None = None,
    shards: int = 4,
) -> Env:
    paths = [str(ROOT / "rules" / "fraud.py")]  # condition rules: alerts are easy to predict
    if extra_rules is not None:
        extra = tmp / "extra_rules"
        extra.mkdir()
        (extra / "extra.py").write_text(extra_rules)
        paths.append(str(extra))
    config = Config(
        source=SourceConfig(stream=f"{name}-tx", checkpoint_table=f"{name}-checkpoints"),
        rules=RulesConfig(paths=tuple(paths)),
        limits=limits or LimitsConfig(),
        sinks=SinksConfig(dynamodb=DynamoDbSinkConfig(table=f"{name}-alerts")),
        dead_letter=DeadLetterConfig(path=str(tmp / "deadletter.jsonl")),
        runtime=RuntimeConfig(checkpoint_interval_s=0.2, drain_timeout_s=20),
        metrics=MetricsConfig(enabled=False),
    )
    config, resources = provision(config, endpoint, shards=shards, prefix=f"{name}-")
    return Env(config, resources, tmp)


def run_until(runtime: Runtime, done: Callable[[Runtime], bool], timeout: float = 60.0) -> None:
    """Turn the loop until ``done`` holds (checked between turns) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    runtime._discover()  # first assignment now rather than after discovery_interval
    while not done(runtime):
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout}s: {runtime.totals}")
        if not runtime.run_once():
            time.sleep(0.01)


def all_settled(expected_records: int) -> Callable[[Runtime], bool]:
    def done(runtime: Runtime) -> bool:
        t = runtime.totals
        return (
            t.records_read >= expected_records
            and t.pending_deliveries == 0
            and not runtime._deliveries
            and all(lag == 0 for lag in t.checkpoint_lag_records.values())
        )

    return done


def stop(runtime: Runtime) -> None:
    """Graceful stop: drain sinks, final checkpoint, close."""
    runtime.stop()
    runtime.run()


def expected_alerts(txs: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Reference: the alert ids the shipped rule (and the LOW test rule) must produce."""
    high, low = set(), set()
    for tx in txs:
        identity = f"tx_id={tx['tx_id']}"
        if tx["amount"] > 2000 and tx["state"] != tx["home_state"]:
            high.add(make_alert_id("high_value_out_of_state", 1, identity))
        if tx["amount"] < 5:
            low.add(make_alert_id("small_purchase", 1, identity))
    return {"HIGH": high, "LOW": low}


def receive_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message in a queue (deleting as it goes, so FIFO groups unlock)."""
    bodies: list[dict[str, Any]] = []
    empty = 0
    while empty < 3:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
        if not messages:
            empty += 1
            continue
        empty = 0
        for m in messages:
            bodies.append(orjson.loads(m["Body"]))
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
    return bodies


def alert_ids_at_destinations(env: Env) -> dict[str, list[str]]:
    """Alert ids as each destination's consumer sees them (lists: duplicates stay visible)."""
    sqs = env.client("sqs")
    res = env.resources
    out = {
        "eventbridge": [
            b["detail"]["alert_id"] for b in receive_all(sqs, res.eventbridge_inbox_url)
        ],
        "sns": [b["alert_id"] for b in receive_all(sqs, res.sns_inbox_url)],
        "sqs": [b["alert_id"] for b in receive_all(sqs, res.fifo_queue_url)],
    }
    ddb = env.client("dynamodb")
    items: list[str] = []
    kwargs: dict[str, Any] = {"TableName": res.alerts_table}
    while True:
        page = ddb.scan(**kwargs)
        items.extend(i["alert_id"]["S"] for i in page["Items"])
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    out["dynamodb"] = items
    return out


def last_sequence_per_shard(env: Env) -> dict[str, int]:
    kinesis = env.client("kinesis")
    out = {}
    for shard in kinesis.list_shards(StreamName=env.resources.stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=env.resources.stream,
            ShardId=shard["ShardId"],
            ShardIteratorType="TRIM_HORIZON",
        )["ShardIterator"]
        last = None
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if page["Records"]:
                last = int(page["Records"][-1]["SequenceNumber"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        if last is not None:
            out[shard["ShardId"]] = last
    return out


def checkpoints(env: Env) -> dict[str, int]:
    ddb = env.client("dynamodb")
    items = ddb.scan(TableName=env.config.source.checkpoint_table)["Items"]
    return {
        i["shard_id"]["S"]: int(i["sequence_number"]["S"]) for i in items if "sequence_number" in i
    }


def create_table(ddb: Any, name: str, hash_key: str, range_key: str | None = None) -> None:
    """An on-demand DynamoDB table with string keys."""
    keys = [(hash_key, "HASH")] + ([(range_key, "RANGE")] if range_key else [])
    ddb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
        KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in keys],
        BillingMode="PAY_PER_REQUEST",
    )
