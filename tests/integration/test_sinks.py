"""Each alert sink and dead-letter destination against the real moto server.

Every test reads what it sent back from the far end (a queue behind a rule or subscription, the
queue itself, the table), so a sink that reports "sent" without delivering fails here.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.aws import make_client
from connectors.batching import BatchingSink
from connectors.deadletter import FileDeadLetter, SqsDeadLetter
from connectors.dynamodb import DynamoDbAlertSink
from connectors.eventbridge import EventBridgeSink
from connectors.sns import SnsSink
from connectors.sqs import SqsSink
from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION
from streamproc.errors import TransportError
from streamproc.interfaces import Delivery, Outcome
from streamproc.records import SEVERITIES, Alert, DeadLetter, Severity, make_alert_id

N = 25  # three batches: 10 + 10 + 5


def make_alert(
    run: str, index: int, *, severity: Severity = "HIGH", fields: dict[str, Any] | None = None
) -> Alert:
    return Alert(
        alert_id=make_alert_id("high_value", 1, f"{run}/{index}"),
        rule="high_value",
        rule_version=1,
        severity=severity,
        key=f"card-{index % 4}",
        key_fields={"card_id": f"card-{index % 4}"},
        fields=fields if fields is not None else {"amount": 2000 + index, "state": "NV"},
        sinks=("test",),
        shard_id="shardId-000000000000",
        sequence_number=str(1000 + index),
        event_time="2026-11-27T12:00:00+00:00",
    )


def deliver(sink: BatchingSink, alerts: list[Alert]) -> list[Outcome]:
    for index, alert in enumerate(alerts):
        sink.add(Delivery(index, alert))
    return drain(sink)


def drain(sink: BatchingSink) -> list[Outcome]:
    """Flush with force until nothing is pending (bounded, so a stuck sink fails the test)."""
    outcomes: list[Outcome] = []
    for _ in range(200):
        if not sink.pending():
            break
        outcomes += sink.flush(force=True)
        time.sleep(min(sink.retry_due_in() or 0.0, 0.05))
    return outcomes


def receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message in the queue now (each deleted after reading), until a receive is empty."""
    messages: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            return messages
        messages += got
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)
            ],
        )


def create_queue(sqs: Any, name: str, *, fifo: bool = False) -> tuple[str, str]:
    attributes = {"FifoQueue": "true"} if fifo else {}
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return url, arn["QueueArn"]


def read_dead_letters(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def sink_client(moto_endpoint: str) -> Any:
    def make(service: str) -> Any:
        return make_client(
            service, region=LOCAL_REGION, endpoint_url=moto_endpoint, **LOCAL_CREDENTIALS
        )

    return make


@pytest.fixture
def dead_letter_path(tmp_path: Path) -> Path:
    return tmp_path / "dead" / "letters.jsonl"  # the directory does not exist yet


def test_eventbridge_sink_delivers_every_alert_to_a_rule_target(
    aws_client: Any, sink_client: Any, unique_name: str, dead_letter_path: Path
) -> None:
    sqs, events = aws_client("sqs"), aws_client("events")
    queue_url, queue_arn = create_queue(sqs, unique_name)
    events.create_event_bus(Name=unique_name)
    events.put_rule(
        Name=unique_name,
        EventBusName=unique_name,
        EventPattern=json.dumps({"source": [f"streamproc.{unique_name}"]}),
    )
    events.put_targets(
        Rule=unique_name, EventBusName=unique_name, Targets=[{"Id": "q", "Arn": queue_arn}]
    )
    sink = EventBridgeSink(
        sink_client("events"),
        bus_name=unique_name,
        source=f"streamproc.{unique_name}",
        dead_letter=FileDeadLetter(dead_letter_path),
    )
    alerts = [make_alert(unique_name, i) for i in range(N)]

    outcomes = deliver(sink, alerts)

    assert sorted(o.delivery_id for o in outcomes) == list(range(N))
    assert {o.status for o in outcomes} == {"sent"}
    events_received = [json.loads(m["Body"]) for m in receive_all(sqs, queue_url)]
    assert sorted(e["detail"]["alert_id"] for e in events_received) == sorted(
        a.alert_id for a in alerts
    )
    assert {e["detail-type"] for e in events_received} == {"Fraud Alert"}
    assert events_received[0]["detail"]["fields"]["state"] == "NV"


def test_sns_sink_publishes_attributes_that_a_filter_policy_selects_on(
    aws_client: Any, sink_client: Any, unique_name: str, dead_letter_path: Path
) -> None:
    sqs, sns = aws_client("sqs"), aws_client("sns")
    topic_arn = sns.create_topic(Name=unique_name)["TopicArn"]
    queue_url, queue_arn = create_queue(sqs, unique_name)
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={
            "RawMessageDelivery": "true",
            "FilterPolicy": json.dumps({"severity": ["HIGH", "CRITICAL"]}),
        },
    )
    sink = SnsSink(
        sink_client("sns"), topic_arn=topic_arn, dead_letter=FileDeadLetter(dead_letter_path)
    )
    alerts = [make_alert(unique_name, i, severity=SEVERITIES[i % 4]) for i in range(N)]

    outcomes = deliver(sink, alerts)

    assert sorted(o.delivery_id for o in outcomes) == list(range(N))
    assert {o.status for o in outcomes} == {"sent"}
    received = receive_all(sqs, queue_url)
    wanted = {a.alert_id for a in alerts if a.severity in ("HIGH", "CRITICAL")}
    assert sorted(json.loads(m["Body"])["alert_id"] for m in received) == sorted(wanted)
    assert {m["MessageAttributes"]["severity"]["StringValue"] for m in received} == {
        "HIGH",
        "CRITICAL",
    }


def test_sns_fifo_sink_deduplicates_a_resent_alert(
    aws_client: Any, sink_client: Any, unique_name: str, dead_letter_path: Path
) -> None:
    sqs, sns = aws_client("sqs"), aws_client("sns")
    topic_arn = sns.create_topic(Name=f"{unique_name}.fifo", Attributes={"FifoTopic": "true"})[
        "TopicArn"
    ]
    queue_url, queue_arn = create_queue(sqs, f"{unique_name}.fifo", fifo=True)
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    sink = SnsSink(
        sink_client("sns"), topic_arn=topic_arn, dead_letter=FileDeadLetter(dead_letter_path)
    )
    alerts = [make_alert(unique_name, i) for i in range(N)]

    outcomes = deliver(sink, [*alerts, alerts[0]])  # the first alert twice

    assert sorted(o.delivery_id for o in outcomes) == list(range(N + 1))
    received = [json.loads(m["Body"])["alert_id"] for m in receive_all(sqs, queue_url)]
    assert sorted(received) == sorted(a.alert_id for a in alerts)


def test_sqs_sink_sends_every_alert_with_its_attributes(
    aws_client: Any, sink_client: Any, unique_name: str, dead_letter_path: Path
) -> None:
    sqs = aws_client("sqs")
    queue_url, _ = create_queue(sqs, unique_name)
    sink = SqsSink(
        sink_client("sqs"), queue_url=queue_url, dead_letter=FileDeadLetter(dead_letter_path)
    )
    alerts = [make_alert(unique_name, i, severity=SEVERITIES[i % 4]) for i in range(N)]

    outcomes = deliver(sink, alerts)

    assert {o.status for o in outcomes} == {"sent"}
    by_id = {json.loads(m["Body"])["alert_id"]: m for m in receive_all(sqs, queue_url)}
    assert sorted(by_id) == sorted(a.alert_id for a in alerts)
    for alert in alerts:
        attributes = by_id[alert.alert_id]["MessageAttributes"]
        assert attributes["severity"]["StringValue"] == alert.severity
        assert attributes["rule"]["StringValue"] == "high_value"


def test_sqs_fifo_sink_deduplicates_a_resent_alert_and_groups_by_key(
    aws_client: Any, sink_client: Any, unique_name: str, dead_letter_path: Path
) -> None:
    sqs = aws_client("sqs")
    queue_url, _ = create_queue(sqs, f"{unique_name}.fifo", fifo=True)
    sink = SqsSink(
        sink_client("sqs"), queue_url=queue_url, dead_letter=FileDeadLetter(dead_letter_path)
    )
    alerts = [make_alert(unique_name, i) for i in range(N)]

    outcomes = deliver(sink, [*alerts, alerts[0]])  # the first alert twice

    assert sorted(o.delivery_id for o in outcomes) == list(range(N + 1))
    received = receive_all(sqs, queue_url)
    assert sorted(json.loads(m["Body"])["alert_id"] for m in received) == sorted(
        a.alert_id for a in alerts
    )
    for message in received:
        body = json.loads(message["Body"])
        assert message["Attributes"]["MessageGroupId"] == body["key"]["card_id"]
        assert message["Attributes"]["MessageDeduplicationId"] == body["alert_id"]


def test_dynamodb_sink_writes_each_alert_once_and_reports_the_resend_as_duplicate(
    aws_client: Any, sink_client: Any, unique_name: str, dead_letter_path: Path
) -> None:
    dynamodb = aws_client("dynamodb")
    dynamodb.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "alert_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "alert_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    sink = DynamoDbAlertSink(
        sink_client("dynamodb"), table=unique_name, dead_letter=FileDeadLetter(dead_letter_path)
    )
    alerts = [make_alert(unique_name, i) for i in range(N)]
    try:
        first = deliver(sink, alerts)
        for index, alert in enumerate(alerts[:3]):  # a restart re-sends a few alerts
            sink.add(Delivery(100 + index, alert))
        again = drain(sink)
    finally:
        sink.close()

    assert {o.status for o in first} == {"sent"}
    assert sorted((o.delivery_id, o.status) for o in again) == [
        (100, "duplicate"),
        (101, "duplicate"),
        (102, "duplicate"),
    ]
    items = dynamodb.scan(TableName=unique_name)["Items"]
    assert sorted(i["alert_id"]["S"] for i in items) == sorted(a.alert_id for a in alerts)
    item = next(i for i in items if i["alert_id"]["S"] == alerts[5].alert_id)
    assert item["rule"] == {"S": "high_value"}
    assert item["rule_version"] == {"N": "1"}
    assert item["severity"] == {"S": "HIGH"}
    assert item["key"] == {"S": "card-1"}
    assert item["sequence_number"] == {"S": "1005"}
    assert json.loads(item["payload"]["S"]) == alerts[5].payload()


def test_oversized_alert_is_parked_in_the_file_dead_letter_and_the_rest_are_sent(
    aws_client: Any, sink_client: Any, unique_name: str, dead_letter_path: Path
) -> None:
    sqs = aws_client("sqs")
    queue_url, _ = create_queue(sqs, unique_name)
    sink = SqsSink(
        sink_client("sqs"), queue_url=queue_url, dead_letter=FileDeadLetter(dead_letter_path)
    )
    big = make_alert(unique_name, 99, fields={"blob": "x" * 300_000})
    alerts = [make_alert(unique_name, 0), big, make_alert(unique_name, 1)]

    outcomes = {o.delivery_id: o for o in deliver(sink, alerts)}

    assert [outcomes[i].status for i in range(3)] == ["sent", "parked", "sent"]
    assert outcomes[1].reason is not None
    assert outcomes[1].reason.startswith("alert too large for SQS (")
    assert outcomes[1].reason.endswith(" bytes > 262144)")
    [letter] = read_dead_letters(dead_letter_path)
    assert letter["kind"] == "alert"
    assert letter["sink"] == "sqs"
    assert letter["alert_id"] == big.alert_id
    assert letter["reason"] == outcomes[1].reason
    assert (letter["shard_id"], letter["sequence_number"]) == ("shardId-000000000000", "1099")
    assert base64.b64decode(letter["data_base64"]) == big.to_json()
    received = [json.loads(m["Body"])["alert_id"] for m in receive_all(sqs, queue_url)]
    assert sorted(received) == sorted([alerts[0].alert_id, alerts[2].alert_id])


def dead_letters(count: int, *, data: bytes = b"{}") -> list[DeadLetter]:
    return [
        DeadLetter(
            kind="record",
            reason=f"bad json at byte {i}",
            shard_id="shardId-000000000001",
            sequence_number=str(500 + i),
            data=data,
        )
        for i in range(count)
    ]


def test_file_dead_letter_appends_one_line_per_entry_and_creates_directories(
    dead_letter_path: Path,
) -> None:
    destination = FileDeadLetter(dead_letter_path)
    first, second = dead_letters(3), dead_letters(2, data=b"\x00\xff raw")
    destination.park(first)
    destination.park(second)
    destination.close()

    assert read_dead_letters(dead_letter_path) == [d.payload() for d in [*first, *second]]


def test_file_dead_letter_raises_transport_error_when_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the directory should be")
    destination = FileDeadLetter(tmp_path / "blocker" / "letters.jsonl")

    with pytest.raises(TransportError) as error:
        destination.park(dead_letters(1))
    assert error.value.retryable


def test_sqs_dead_letter_round_trip(aws_client: Any, sink_client: Any, unique_name: str) -> None:
    sqs = aws_client("sqs")
    queue_url, _ = create_queue(sqs, unique_name)
    entries = dead_letters(23)  # three SendMessageBatch calls

    SqsDeadLetter(sink_client("sqs"), queue_url).park(entries)

    received = [json.loads(m["Body"]) for m in receive_all(sqs, queue_url)]
    assert sorted(received, key=lambda p: p["sequence_number"]) == [d.payload() for d in entries]


def test_sqs_dead_letter_truncates_an_oversized_entry_and_says_so(
    aws_client: Any, sink_client: Any, unique_name: str
) -> None:
    sqs = aws_client("sqs")
    queue_url, _ = create_queue(sqs, unique_name)
    [entry] = dead_letters(1, data=b"y" * 400_000)

    SqsDeadLetter(sink_client("sqs"), queue_url).park([entry])

    [message] = receive_all(sqs, queue_url)
    assert len(message["Body"].encode()) <= 256 * 1024
    stored = json.loads(message["Body"])
    kept = base64.b64decode(stored["data_base64"])
    assert 0 < len(kept) < 400_000
    assert kept == entry.data[: len(kept)]
    assert stored["reason"] == (
        f"bad json at byte 0 [data truncated from 400000 to {len(kept)} bytes to fit the "
        "dead-letter destination]"
    )


def test_sqs_dead_letter_raises_transport_error_when_the_queue_is_missing(
    sink_client: Any, moto_endpoint: str, unique_name: str
) -> None:
    missing = f"{moto_endpoint}/123456789012/{unique_name}-missing"

    with pytest.raises(TransportError, match="did not store 2 of 2 entries"):
        SqsDeadLetter(sink_client("sqs"), missing).park(dead_letters(2))
