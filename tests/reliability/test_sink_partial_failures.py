"""Faults no emulator produces, injected into real boto3 clients talking to moto.

``Faults`` uses botocore event hooks on the real client (no mocks), two techniques:
- per-entry failures of SNS/SQS/EventBridge batches: a ``provide-client-params`` hook cuts the
  chosen entries out of the request (moto really stores the rest), then an ``after-call`` hook
  adds them to the parsed response as failed (``Failed`` items for SNS/SQS, positional
  ``ErrorCode`` entries and ``FailedEntryCount`` for EventBridge);
- whole-call errors and DynamoDB PutItem errors: a ``before-send`` hook returns a canned
  ``botocore.awsrequest.AWSResponse`` with the service's error body, parsed by botocore into
  the same ``ClientError`` a real service error produces.
Unreachable endpoints and a missing dead-letter queue are real. A manual clock (``Wired``)
drives backoff, so nothing sleeps; ``connectors.aws.NO_RETRIES`` keeps botocore from retrying.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.awsrequest import AWSResponse

from connectors.aws import NO_RETRIES, make_client
from connectors.batching import BatchingSink
from connectors.deadletter import FileDeadLetter, SqsDeadLetter
from connectors.dynamodb import DynamoDbAlertSink
from connectors.eventbridge import EventBridgeSink
from connectors.sns import SnsSink
from connectors.sqs import SqsSink
from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION, free_port, start_moto
from streamproc.interfaces import Delivery, Outcome
from streamproc.records import Alert, make_alert_id

ALL = ["sqs", "sns", "eventbridge", "dynamodb"]
# kind -> (boto3 service, operation, entries parameter, body field, error protocol)
SERVICES = {
    "sqs": ("sqs", "SendMessageBatch", "Entries", "MessageBody", "json"),
    "sns": ("sns", "PublishBatch", "PublishBatchRequestEntries", "Message", "query"),
    "eventbridge": ("events", "PutEvents", "Entries", "Detail", "json"),
    "dynamodb": ("dynamodb", "PutItem", "", "", "json"),
}
# kind -> (a permanent entry error code, its throttling code)
CODES = {
    "sqs": ("InvalidMessageContents", "RequestThrottled"),
    "sns": ("InvalidParameter", "Throttled"),
    "eventbridge": ("MalformedDetail", "ThrottlingException"),
    "dynamodb": ("ValidationException", "ProvisionedThroughputExceededException"),
}


# kind -> a retryable entry error that is not throttling (a server-side hiccup on one entry)
TRANSIENT = {
    "sqs": "InternalError",
    "sns": "InternalError",
    "eventbridge": "InternalFailure",
    "dynamodb": "InternalServerError",
}


class _Body(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.read()


def error_response(protocol: str, code: str) -> AWSResponse:
    """A service error (HTTP 400) as the wire carries it, for botocore to parse."""
    if protocol == "query":
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected"
            "</Message></Error><RequestId>injected</RequestId></ErrorResponse>"
        ).encode()
        headers = {"Content-Type": "text/xml"}
    else:
        body = json.dumps({"__type": code, "message": "injected"}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.0"}
    return AWSResponse("https://injected.invalid/", 400, headers, _Body(body))


class Faults:
    """Fails chosen entries once each (``entries``: alert id -> (code, SenderFault)) and/or the
    next ``calls`` whole calls with ``code``; records the alert ids of every attempt in
    ``sent`` and counts ``calls``. Thread-safe: the DynamoDB sink calls from its pool."""

    def __init__(
        self,
        client: Any,
        kind: str,
        *,
        entries: dict[str, tuple[str, bool]] | None = None,
        calls: int = 0,
        code: str = "",
    ) -> None:
        _, operation, self.entries_key, self.body_key, self.protocol = SERVICES[kind]
        self.kind, self.entries, self.failing_calls, self.code = kind, entries or {}, calls, code
        self.sent: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()
        client.meta.events.register(f"before-send.*.{operation}", self._before_send)
        if kind != "dynamodb":
            client.meta.events.register(f"provide-client-params.*.{operation}", self._cut)
            client.meta.events.register(f"after-call.*.{operation}", self._answer)

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        with self._lock:
            if self.kind == "dynamodb":
                alert_id = json.loads(request.body)["Item"]["alert_id"]["S"]
                self.calls += 1
                self.sent.append(alert_id)
                if alert_id in self.entries:
                    return error_response("json", self.entries.pop(alert_id)[0])
            if self.failing_calls > 0:
                self.failing_calls -= 1
                return error_response(self.protocol, self.code)
        return None

    def _cut(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        entries = params[self.entries_key]
        ids = [orjson.loads(entry[self.body_key])["alert_id"] for entry in entries]
        self.calls += 1
        self.sent += ids
        failing = {i: self.entries.pop(a) for i, a in enumerate(ids) if a in self.entries}
        if not failing:
            return None
        context["injected"] = (entries, failing)
        return {**params, self.entries_key: [e for i, e in enumerate(entries) if i not in failing]}

    def _answer(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "injected" not in context:
            return
        entries, failing = context["injected"]
        if self.kind == "eventbridge":  # positional: rebuild the answer in request order
            real = iter(parsed["Entries"])
            parsed["Entries"] = [
                {"ErrorCode": failing[i][0], "ErrorMessage": "injected"}
                if i in failing
                else next(real)
                for i in range(len(entries))
            ]
            parsed["FailedEntryCount"] = parsed.get("FailedEntryCount", 0) + len(failing)
            return
        parsed.setdefault("Failed", []).extend(
            {"Id": entries[i]["Id"], "SenderFault": fault, "Code": code, "Message": "injected"}
            for i, (code, fault) in failing.items()
        )


@dataclass
class Wired:
    """A sink on a real client, its manual clock, and what reached the far end."""

    client: Any
    read_back: Callable[[], list[str]]  # alert ids delivered
    run: str
    dead_letter_path: Path
    sink: BatchingSink = field(init=False)
    now: float = 1000.0
    next_delivery: int = 0

    def clock(self) -> float:
        return self.now

    def advance(self) -> None:
        self.now += 3600.0  # past any backoff (the ceiling is 20 s)

    def dead_letters(self) -> list[dict[str, Any]]:
        if not self.dead_letter_path.exists():
            return []
        return [json.loads(line) for line in self.dead_letter_path.read_text().splitlines()]

    def add_alerts(self, count: int, *, run: str = "", blob_bytes: int = 0) -> list[str]:
        """Adds ``count`` alerts (delivery ids go on counting); returns their ids, sorted."""
        ids = [make_alert_id("score", 2, f"{run or self.run}/{i}") for i in range(count)]
        fields = {"score": 0.9, "blob": "b" * blob_bytes}
        for i, alert_id in enumerate(ids):
            alert = Alert(
                alert_id, "score", 2, "CRITICAL", f"card-{i}", fields, (), "shard-3", str(i)
            )
            self.sink.add(Delivery(self.next_delivery, alert))
            self.next_delivery += 1
        return sorted(ids)


@pytest.fixture
def wire(
    aws_client: Any, unique_name: str, moto_endpoint: str, tmp_path: Path
) -> Iterator[Callable[..., Wired]]:
    sqs, name = aws_client("sqs"), unique_name
    made: list[BatchingSink] = []

    def queue() -> tuple[str, str]:
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return url, attributes["Attributes"]["QueueArn"]

    def drain(url: str) -> list[str]:
        bodies: list[dict[str, Any]] = []
        while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            bodies += [json.loads(m["Body"]) for m in got]
            for m in got:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return [b["detail"]["alert_id"] if "detail" in b else b["alert_id"] for b in bodies]

    def scan() -> list[str]:
        return [i["alert_id"]["S"] for i in aws_client("dynamodb").scan(TableName=name)["Items"]]

    def make(kind: str, *, endpoint: str = "", **opts: Any) -> Wired:
        client = make_client(
            SERVICES[kind][0],
            region=LOCAL_REGION,
            endpoint_url=endpoint or moto_endpoint,
            config=NO_RETRIES,
            **LOCAL_CREDENTIALS,
        )
        wired = Wired(client, scan, name, tmp_path / "dead.jsonl")
        defaults: dict[str, Any] = {"dead_letter": FileDeadLetter(wired.dead_letter_path)}
        opts = defaults | {"clock": wired.clock} | opts
        if kind == "dynamodb":
            aws_client("dynamodb").create_table(
                TableName=name,
                KeySchema=[{"AttributeName": "alert_id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "alert_id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            wired.sink = DynamoDbAlertSink(client, table=name, **opts)
        else:
            url, arn = queue()
            wired.read_back = lambda: drain(url)
        if kind == "sqs":
            wired.sink = SqsSink(client, queue_url=url, **opts)
        elif kind == "sns":
            topic = aws_client("sns").create_topic(Name=name)["TopicArn"]
            raw = {"RawMessageDelivery": "true"}
            aws_client("sns").subscribe(
                TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=raw
            )
            wired.sink = SnsSink(client, topic_arn=topic, **opts)
        elif kind == "eventbridge":
            events = aws_client("events")
            events.create_event_bus(Name=name)
            pattern = json.dumps({"source": ["streamproc"]})
            events.put_rule(Name=name, EventBusName=name, EventPattern=pattern)
            events.put_targets(Rule=name, EventBusName=name, Targets=[{"Id": "q", "Arn": arn}])
            wired.sink = EventBridgeSink(client, bus_name=name, **opts)
        made.append(wired.sink)
        return wired

    yield make
    for sink in made:
        sink.close()


def statuses(outcomes: list[Outcome]) -> dict[int, str]:
    return {o.delivery_id: o.status for o in outcomes}


@pytest.mark.parametrize(
    ("kind", "code", "sender_fault"),
    [
        ("sqs", "InternalError", False),
        ("sqs", "RequestThrottled", True),  # a throttling code is retried whatever SenderFault says
        ("sns", "InternalError", False),
        ("sns", "Throttled", True),
        ("eventbridge", "ThrottlingException", False),
        ("eventbridge", "InternalFailure", False),
        ("dynamodb", "ProvisionedThroughputExceededException", False),
    ],
)
def test_partial_failure_resends_only_retryable_entries_and_parks_the_refused_one(
    wire: Callable[..., Wired], kind: str, code: str, sender_fault: bool
) -> None:
    """Per-entry faults in a 10-entry batch: 3 entries fail once with the retryable ``code``,
    1 with the service's permanent code; the other 6 are sent."""
    wired = wire(kind)
    all_ids = wired.add_alerts(10)
    refused, retried, permanent = all_ids[0], all_ids[1:4], CODES[kind][0]
    failures = {refused: (permanent, True)} | dict.fromkeys(retried, (code, sender_fault))
    faults = Faults(wired.client, kind, entries=failures)

    outcomes = {o.alert_id: o for o in wired.sink.flush(force=True)}

    assert sorted(outcomes) == sorted(set(all_ids) - set(retried))
    assert {a: o.status for a, o in outcomes.items() if o.status != "sent"} == {refused: "parked"}
    reason = outcomes[refused].reason
    assert reason == f"{wired.sink.service} refused the alert: {permanent}: injected"
    [letter] = wired.dead_letters()
    assert (letter["alert_id"], letter["sink"], letter["reason"]) == (refused, kind, reason)
    assert wired.sink.pending() == 3  # parking one entry keeps the others buffered
    assert wired.sink.flush(force=True) == []  # in backoff: not due yet, nothing sent
    assert sorted(faults.sent) == all_ids
    wired.advance()

    resent = wired.sink.flush(force=True)
    assert sorted((o.alert_id, o.status) for o in resent) == [(a, "sent") for a in retried]
    assert sorted(faults.sent[10:]) == retried  # exactly the retried ones, never the refused one
    assert wired.sink.pending() == 0
    assert sorted(wired.read_back()) == all_ids[1:]


@pytest.mark.parametrize("kind", ALL)
def test_a_throttled_batch_stops_the_flush_and_holds_every_entry_until_it_passes(
    wire: Callable[..., Wired], kind: str
) -> None:
    """Whole-call faults: the first batch is throttled in two flushes in a row. Meanwhile no
    other batch is tried and no flush sends before the backoff ends: a struggling (or
    unreachable) service is not hammered and flush does not pile up timeouts."""
    wired = wire(kind)
    per_batch = wired.sink.max_batch_entries
    batch_calls = per_batch if kind == "dynamodb" else 1  # one PutItem per alert
    faults = Faults(wired.client, kind, calls=2 * batch_calls, code=CODES[kind][1])
    all_ids = wired.add_alerts(2 * per_batch + 5)

    for round_ in (1, 2):
        assert wired.sink.flush(force=True) == []
        assert faults.calls == round_ * batch_calls
        assert wired.sink.flush(force=True) == []
        assert faults.calls == round_ * batch_calls
        assert wired.sink.pending() == len(all_ids)
        wired.advance()

    assert statuses(wired.sink.flush(force=True)) == dict.fromkeys(range(len(all_ids)), "sent")
    assert sorted(wired.read_back()) == all_ids
    assert wired.dead_letters() == []


@pytest.mark.parametrize("kind", ALL)
def test_a_service_wide_outage_is_waited_out_not_parked(
    wire: Callable[..., Wired], kind: str
) -> None:
    """Whole-call faults (the service throttles every call for a long time) do not use up the
    entries' attempts: nothing is parked, everything stays pending, and it all goes out once
    the service recovers. Reading slows meanwhile through the runtime's backpressure."""
    wired = wire(kind, max_attempts=3)
    code = CODES[kind][1]
    faults = Faults(wired.client, kind, calls=1_000, code=code)
    all_ids = wired.add_alerts(4)

    for _ in range(10):  # far more flushes than max_attempts
        assert wired.sink.flush(force=True) == []
        assert wired.sink.pending() == 4
        wired.advance()
    assert wired.sink.failed_attempts >= 10
    faults.failing_calls = 0  # the service recovers

    outcomes = wired.sink.flush(force=True)
    assert statuses(outcomes) == dict.fromkeys(range(4), "sent")
    assert sorted(wired.read_back()) == all_ids
    assert wired.dead_letters() == []


@pytest.mark.parametrize("kind", ALL)
def test_an_entry_that_keeps_failing_while_others_succeed_is_parked_after_max_attempts(
    wire: Callable[..., Wired], kind: str
) -> None:
    """Per-entry faults: one entry fails with a retryable code on every attempt while the rest
    of its batch succeeds; after ``max_attempts`` it is parked with the code in the reason."""
    wired = wire(kind, max_attempts=3)
    code = TRANSIENT[kind]
    all_ids = wired.add_alerts(4)
    stubborn = all_ids[0]
    faults = Faults(wired.client, kind, entries={stubborn: (code, False)})

    outcomes = wired.sink.flush(force=True)
    assert sorted(o.alert_id for o in outcomes) == all_ids[1:]
    delivered = all_ids[1:]
    for round_ in range(2):
        faults.entries[stubborn] = (code, False)  # fail it again
        # traffic goes on: a new alert shares the batch (an empty request cannot be injected)
        delivered += wired.add_alerts(1, run=f"more-{round_}")
        wired.advance()
        outcomes = wired.sink.flush(force=True)

    parked = [o for o in outcomes if o.status == "parked"]
    assert [o.alert_id for o in parked] == [stubborn]
    assert parked[0].reason is not None
    assert f"kept failing after 3 attempts: {code}" in parked[0].reason
    assert [d["alert_id"] for d in wired.dead_letters()] == [stubborn]
    assert sorted(wired.read_back()) == sorted(delivered)


@pytest.mark.parametrize("kind", ALL)
def test_an_entry_throttled_every_time_is_never_parked(
    wire: Callable[..., Wired], kind: str
) -> None:
    """Per-entry throttling while the rest of the batch succeeds: throttling says "slow down",
    not "bad entry", so the entry waits (however many attempts) and is delivered at last."""
    wired = wire(kind, max_attempts=3)
    code = CODES[kind][1]
    all_ids = wired.add_alerts(4)
    throttled = all_ids[0]
    faults = Faults(wired.client, kind, entries={throttled: (code, False)})
    delivered = list(all_ids[1:])
    wired.sink.flush(force=True)
    for round_ in range(6):  # twice max_attempts
        faults.entries[throttled] = (code, False)
        delivered += wired.add_alerts(1, run=f"more-{round_}")
        wired.advance()
        outcomes = wired.sink.flush(force=True)
        assert all(o.status == "sent" for o in outcomes)
    assert wired.sink.pending() == 1
    wired.advance()
    outcomes = wired.sink.flush(force=True)
    assert [(o.alert_id, o.status) for o in outcomes] == [(throttled, "sent")]
    assert sorted(wired.read_back()) == sorted([*delivered, throttled])
    assert wired.dead_letters() == []


@pytest.mark.parametrize("kind", ALL)
def test_an_unreachable_endpoint_loses_nothing_and_delivers_once_it_is_back(
    wire: Callable[..., Wired], kind: str
) -> None:
    """A real refused connection: the client points at a closed port on 127.0.0.1, where a
    second moto server (sharing the session's in-process state) is started later."""
    port = free_port()
    wired = wire(kind, endpoint=f"http://127.0.0.1:{port}")
    all_ids = wired.add_alerts(10)

    for _ in range(3):
        assert wired.sink.flush(force=True) == []
        assert wired.sink.pending() == 10
        wired.advance()
    assert wired.sink.failed_attempts == 3 * 10  # every entry failed in each of three flushes

    server = start_moto(port)
    try:
        outcomes = wired.sink.flush(force=True)
    finally:
        server.stop()

    assert statuses(outcomes) == dict.fromkeys(range(10), "sent")
    assert sorted(wired.read_back()) == all_ids


@pytest.mark.parametrize("kind", ALL)
def test_a_failing_dead_letter_destination_keeps_the_entry_until_it_recovers(
    wire: Callable[..., Wired], aws_client: Any, moto_endpoint: str, unique_name: str, kind: str
) -> None:
    """A real failure: the dead-letter queue does not exist yet (QueueDoesNotExist)."""
    sqs, dlq_name = aws_client("sqs"), f"{unique_name}-dlq"
    dead_letter = SqsDeadLetter(sqs, f"{moto_endpoint}/123456789012/{dlq_name}")
    wired = wire(kind, dead_letter=dead_letter)
    wired.add_alerts(4)
    [big] = wired.add_alerts(1, run="big", blob_bytes=wired.sink.max_entry_bytes)

    assert statuses(wired.sink.flush(force=True)) == dict.fromkeys(range(4), "sent")
    assert wired.sink.pending() == 1
    wired.advance()
    assert wired.sink.flush(force=True) == []
    assert wired.sink.pending() == 1

    dlq_url = sqs.create_queue(QueueName=dlq_name)["QueueUrl"]
    wired.advance()
    [outcome] = wired.sink.flush(force=True)

    assert (outcome.delivery_id, outcome.status) == (4, "parked")
    assert wired.sink.pending() == 0
    [message] = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
    letter = json.loads(message["Body"])
    assert letter["alert_id"] == big
    assert str(outcome.reason).startswith(f"alert too large for {wired.sink.service}")
    # too big for the sink is too big for the dead-letter queue too: cut, and it says so
    assert letter["reason"].startswith(f"{outcome.reason} [data truncated from")
