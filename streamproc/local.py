"""The embedded local mode: emulated AWS resources for ``streamproc run --local``.

Creates (idempotently) everything a run needs on an emulator endpoint: the stream, the
checkpoint table, and the four alert destinations together with queues that let you *see* what
each destination received:

- EventBridge bus ``streamproc-alerts`` with a rule (pattern: our ``source``) targeting the SQS
  queue ``streamproc-eventbridge-inbox``;
- SNS topic ``streamproc-alerts`` with the SQS queue ``streamproc-sns-high-inbox`` subscribed
  through a filter policy that passes only HIGH and CRITICAL severities;
- SQS FIFO queue ``streamproc-alerts.fifo`` (deduplication id = alert id);
- DynamoDB table ``streamproc-alerts`` (hash key ``alert_id``), and the checkpoint table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import boto3

from streamproc.config import Config
from streamproc.emulators import LOCAL_CREDENTIALS

PREFIX = "streamproc-"
SNS_FILTER = {"severity": ["HIGH", "CRITICAL"]}


@dataclass(frozen=True)
class LocalResources:
    endpoint_url: str
    region: str
    stream: str
    topic_arn: str
    fifo_queue_url: str
    eventbridge_inbox_url: str
    sns_inbox_url: str
    alerts_table: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service, region_name=self.region, endpoint_url=self.endpoint_url, **LOCAL_CREDENTIALS
        )


def provision(
    config: Config, endpoint_url: str, *, shards: int = 4, prefix: str = PREFIX
) -> tuple[Config, LocalResources]:
    """Create the local resources and return the config pointed at them (all sinks enabled).

    The stream and the two tables are named by ``config``; the bus, topic and queues by
    ``prefix`` (tests use a unique prefix per test on a shared emulator).
    """
    region = config.aws.region
    bus, topic = f"{prefix}alerts", f"{prefix}alerts"

    def client(service: str) -> Any:
        return boto3.client(
            service, region_name=region, endpoint_url=endpoint_url, **LOCAL_CREDENTIALS
        )

    kinesis, ddb, sqs, sns, events = (
        client(s) for s in ("kinesis", "dynamodb", "sqs", "sns", "events")
    )
    stream = config.source.stream
    if stream not in kinesis.list_streams().get("StreamNames", []):
        kinesis.create_stream(StreamName=stream, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )

    _ensure_table(ddb, config.source.checkpoint_table, [("stream", "HASH"), ("shard_id", "RANGE")])
    _ensure_table(ddb, config.source.state_table, [("shard", "HASH"), ("item", "RANGE")])
    alerts_table = config.sinks.dynamodb.table
    _ensure_table(ddb, alerts_table, [("alert_id", "HASH")])

    def queue(name: str) -> tuple[str, str]:
        attrs = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
        url: str = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        return url, arn

    fifo_url, _ = queue(f"{prefix}alerts.fifo")
    eb_inbox_url, eb_inbox_arn = queue(f"{prefix}eventbridge-inbox")
    sns_inbox_url, sns_inbox_arn = queue(f"{prefix}sns-high-inbox")

    buses = {b["Name"] for b in events.list_event_buses().get("EventBuses", [])}
    if bus not in buses:
        events.create_event_bus(Name=bus)
    source_name = config.sinks.eventbridge.source
    events.put_rule(
        Name=f"{prefix}all-alerts",
        EventBusName=bus,
        EventPattern=json.dumps({"source": [source_name]}),
        State="ENABLED",
    )
    events.put_targets(
        Rule=f"{prefix}all-alerts",
        EventBusName=bus,
        Targets=[{"Id": "inbox", "Arn": eb_inbox_arn}],
    )

    topic_arn: str = sns.create_topic(Name=topic)["TopicArn"]
    subscribed = {
        s["Endpoint"]
        for s in sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])
    }
    if sns_inbox_arn not in subscribed:
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=sns_inbox_arn,
            Attributes={"FilterPolicy": json.dumps(SNS_FILTER), "RawMessageDelivery": "true"},
        )

    sinks = dataclasses.replace(
        config.sinks,
        eventbridge=dataclasses.replace(config.sinks.eventbridge, enabled=True, bus_name=bus),
        sns=dataclasses.replace(config.sinks.sns, enabled=True, topic_arn=topic_arn),
        sqs=dataclasses.replace(config.sinks.sqs, enabled=True, queue_url=fifo_url),
        dynamodb=dataclasses.replace(config.sinks.dynamodb, enabled=True, table=alerts_table),
    )
    local_config = dataclasses.replace(
        config,
        aws=dataclasses.replace(config.aws, endpoint_url=endpoint_url),
        sinks=sinks,
    )
    resources = LocalResources(
        endpoint_url=endpoint_url,
        region=region,
        stream=stream,
        topic_arn=topic_arn,
        fifo_queue_url=fifo_url,
        eventbridge_inbox_url=eb_inbox_url,
        sns_inbox_url=sns_inbox_url,
        alerts_table=alerts_table,
    )
    return local_config.validate(), resources


def _ensure_table(ddb: Any, name: str, keys: list[tuple[str, str]]) -> None:
    if name in ddb.list_tables().get("TableNames", []):
        return
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in keys],
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
        BillingMode="PAY_PER_REQUEST",
    )
    for _ in range(100):
        if ddb.describe_table(TableName=name)["Table"]["TableStatus"] == "ACTIVE":
            return
        time.sleep(0.1)


def destination_counts(res: LocalResources) -> dict[str, int]:
    """How many alerts each destination holds right now (what a downstream consumer would see)."""
    sqs = res.client("sqs")

    def depth(url: str) -> int:
        attrs = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    ddb = res.client("dynamodb")
    items = 0
    kwargs: dict[str, Any] = {"TableName": res.alerts_table, "Select": "COUNT"}
    while True:
        page = ddb.scan(**kwargs)
        items += int(page["Count"])
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return {
        "eventbridge → inbox queue": depth(res.eventbridge_inbox_url),
        "sns → HIGH/CRITICAL inbox queue": depth(res.sns_inbox_url),
        "sqs fifo queue": depth(res.fifo_queue_url),
        "dynamodb table items": items,
    }
