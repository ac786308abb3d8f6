"""The Sink contract (streamproc.interfaces.Sink), checked against every alert sink on moto.

Service calls are observed, never replaced: a ``provide-client-params`` hook on the real client
records how many entries each call carried, and a ``before-send`` hook counts HTTP requests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connectors.aws import NO_RETRIES, make_client
from connectors.batching import BatchingSink
from connectors.deadletter import FileDeadLetter
from connectors.dynamodb import DynamoDbAlertSink
from connectors.eventbridge import EventBridgeSink
from connectors.sns import SnsSink
from connectors.sqs import SqsSink
from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION, free_port
from streamproc.interfaces import Delivery, Outcome
from streamproc.records import Alert, make_alert_id

SINKS = ["eventbridge", "sns", "sqs", "dynamodb"]


def make_alert(run: str, index: int, *, fields: dict[str, Any] | None = None) -> Alert:
    return Alert(
        alert_id=make_alert_id("velocity", 3, f"{run}/{index}"),
        rule="velocity",
        rule_version=3,
        severity="MEDIUM",
        key=f"card-{index % 5}",
        fields=fields if fields is not None else {"count": index},
        sinks=("contract",),
        shard_id="shardId-000000000002",
        sequence_number=str(70 + index),
    )


@dataclass
class Target:
    """One sink under test: how to build it and how to observe its service calls."""

    kind: str
    service: str  # boto3 service name
    operation: str  # the call that carries a batch
    per_call_limit: int  # entries one call may carry
    build: Callable[..., BatchingSink]  # (client, dead_letter, **options)
    calls: list[int] = field(default_factory=list)  # entries per observed call
    call_bytes: list[int] = field(default_factory=list)  # payload bytes per observed call
    http_requests: int = 0  # HTTP requests the client was about to send

    def observe(self, client: Any) -> Any:
        def record(params: dict[str, Any], **_: Any) -> None:
            if self.kind == "dynamodb":
                self.calls.append(1)
                self.call_bytes.append(0)
                return
            entries = params["PublishBatchRequestEntries" if self.kind == "sns" else "Entries"]
            body = {"eventbridge": "Detail", "sns": "Message", "sqs": "MessageBody"}[self.kind]
            self.calls.append(len(entries))
            self.call_bytes.append(sum(len(e[body].encode()) for e in entries))

        def count(**_: Any) -> None:
            self.http_requests += 1

        client.meta.events.register(f"provide-client-params.*.{self.operation}", record)
        client.meta.events.register("before-send", count)
        return client


@pytest.fixture(params=SINKS)
def target(request: pytest.FixtureRequest, aws_client: Any, unique_name: str) -> Target:
    kind: str = request.param
    if kind == "eventbridge":
        aws_client("events").create_event_bus(Name=unique_name)
        return Target(
            kind,
            "events",
            "PutEvents",
            10,
            lambda client, dead_letter, **options: EventBridgeSink(
                client, bus_name=unique_name, dead_letter=dead_letter, **options
            ),
        )
    if kind == "sns":
        topic_arn = aws_client("sns").create_topic(Name=unique_name)["TopicArn"]
        return Target(
            kind,
            "sns",
            "PublishBatch",
            10,
            lambda client, dead_letter, **options: SnsSink(
                client, topic_arn=topic_arn, dead_letter=dead_letter, **options
            ),
        )
    if kind == "sqs":
        queue_url = aws_client("sqs").create_queue(QueueName=unique_name)["QueueUrl"]
        return Target(
            kind,
            "sqs",
            "SendMessageBatch",
            10,
            lambda client, dead_letter, **options: SqsSink(
                client, queue_url=queue_url, dead_letter=dead_letter, **options
            ),
        )
    aws_client("dynamodb").create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "alert_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "alert_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return Target(
        kind,
        "dynamodb",
        "PutItem",
        1,
        lambda client, dead_letter, **options: DynamoDbAlertSink(
            client, table=unique_name, dead_letter=dead_letter, **options
        ),
    )


@pytest.fixture
def dead_letter_path(tmp_path: Path) -> Path:
    return tmp_path / "dead.jsonl"


@pytest.fixture
def make_sink(
    target: Target, moto_endpoint: str, dead_letter_path: Path
) -> Iterator[Callable[..., BatchingSink]]:
    built: list[BatchingSink] = []

    def make(endpoint: str | None = None, **options: Any) -> BatchingSink:
        client = make_client(
            target.service,
            region=LOCAL_REGION,
            endpoint_url=endpoint or moto_endpoint,
            config=NO_RETRIES,
            **LOCAL_CREDENTIALS,
        )
        sink = target.build(target.observe(client), FileDeadLetter(dead_letter_path), **options)
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def add_all(sink: BatchingSink, alerts: list[Alert]) -> None:
    for index, alert in enumerate(alerts):
        sink.add(Delivery(index, alert))


def flush_until_done(sink: BatchingSink) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for _ in range(20):  # moto never fails a call, so one or two flushes finish the job
        outcomes += sink.flush(force=True)
        if not sink.pending():
            break
    return outcomes


def test_every_delivery_gets_exactly_one_outcome(
    make_sink: Callable[..., BatchingSink], unique_name: str
) -> None:
    sink = make_sink()
    alerts = [make_alert(unique_name, i) for i in range(57)]
    add_all(sink, alerts)

    outcomes = flush_until_done(sink)
    outcomes += sink.flush(force=True)  # nothing left: must decide nothing more

    assert sorted(o.delivery_id for o in outcomes) == list(range(57))
    assert [o.alert_id for o in sorted(outcomes, key=lambda o: o.delivery_id)] == [
        a.alert_id for a in alerts
    ]
    assert {o.status for o in outcomes} == {"sent"}
    assert sink.pending() == 0
    assert sink.retry_due_in() is None


def test_add_does_no_io_even_when_the_service_is_unreachable(
    make_sink: Callable[..., BatchingSink], target: Target, unique_name: str
) -> None:
    sink = make_sink(endpoint=f"http://127.0.0.1:{free_port()}")

    add_all(sink, [make_alert(unique_name, i) for i in range(15)])

    assert sink.pending() == 15
    assert target.http_requests == 0
    assert target.calls == []
    assert sink.flush(force=True) == []  # the first flush does try, and fails retryably
    assert target.http_requests > 0
    assert sink.pending() == 15


def test_pending_counts_and_only_force_sends_a_partial_batch_before_its_linger(
    make_sink: Callable[..., BatchingSink], target: Target, unique_name: str
) -> None:
    sink = make_sink(linger_seconds=3600)
    add_all(sink, [make_alert(unique_name, i) for i in range(3)])
    assert sink.pending() == 3

    assert sink.flush() == []
    assert target.calls == []
    assert sink.pending() == 3

    outcomes = sink.flush(force=True)
    assert sorted(o.delivery_id for o in outcomes) == [0, 1, 2]
    assert sink.pending() == 0


def test_a_partial_batch_goes_without_force_once_its_linger_is_over(
    make_sink: Callable[..., BatchingSink], unique_name: str
) -> None:
    now = [100.0]
    sink = make_sink(linger_seconds=0.5, clock=lambda: now[0])
    add_all(sink, [make_alert(unique_name, i) for i in range(3)])

    assert sink.flush() == []
    assert sink.retry_due_in() == 0.5
    now[0] += 0.5
    assert sink.retry_due_in() == 0.0

    assert sorted(o.delivery_id for o in sink.flush()) == [0, 1, 2]
    assert sink.retry_due_in() is None


def test_a_full_batch_goes_without_force_and_the_remainder_waits(
    make_sink: Callable[..., BatchingSink], unique_name: str
) -> None:
    sink = make_sink(linger_seconds=3600)
    full = sink.max_batch_entries
    add_all(sink, [make_alert(unique_name, i) for i in range(full + 2)])

    outcomes = sink.flush()

    assert sorted(o.delivery_id for o in outcomes) == list(range(full))
    assert sink.pending() == 2


def test_calls_never_carry_more_entries_than_the_service_allows(
    make_sink: Callable[..., BatchingSink], target: Target, unique_name: str
) -> None:
    sink = make_sink()
    add_all(sink, [make_alert(unique_name, i) for i in range(57)])

    flush_until_done(sink)

    assert sum(target.calls) == 57  # every entry sent exactly once
    assert max(target.calls) <= target.per_call_limit
    if target.kind != "dynamodb":
        assert max(target.calls) == 10  # and batches are actually used


# PutItem carries one item: DynamoDB's item limit is covered by the oversize test below.
@pytest.mark.parametrize("target", ["eventbridge", "sns", "sqs"], indirect=True)
def test_calls_stay_under_the_service_byte_limit(
    make_sink: Callable[..., BatchingSink], target: Target, unique_name: str
) -> None:
    sink = make_sink()
    alerts = [make_alert(unique_name, i, fields={"blob": "z" * 120_000}) for i in range(12)]
    add_all(sink, alerts)

    outcomes = flush_until_done(sink)

    assert {o.status for o in outcomes} == {"sent"}
    assert sum(target.calls) == 12
    assert len(target.calls) > 1
    assert max(target.call_bytes) <= sink.max_batch_bytes


def test_an_alert_above_the_entry_limit_is_parked_with_the_reason_never_sent(
    make_sink: Callable[..., BatchingSink],
    target: Target,
    unique_name: str,
    dead_letter_path: Path,
) -> None:
    sink = make_sink()
    big = make_alert(unique_name, 1, fields={"blob": "q" * (sink.max_entry_bytes + 1)})
    add_all(sink, [make_alert(unique_name, 0), big, make_alert(unique_name, 2)])

    outcomes = {o.delivery_id: o for o in flush_until_done(sink)}

    assert [outcomes[i].status for i in range(3)] == ["sent", "parked", "sent"]
    reason = outcomes[1].reason
    assert reason is not None
    assert reason.startswith(f"alert too large for {sink.service} (")
    assert reason.endswith(f" bytes > {sink.max_entry_bytes})")
    assert sum(target.calls) == 2
    [letter] = [json.loads(line) for line in dead_letter_path.read_text().splitlines()]
    assert (letter["alert_id"], letter["sink"], letter["reason"]) == (
        big.alert_id,
        target.kind,
        reason,
    )
    assert base64.b64decode(letter["data_base64"]) == big.to_json()
