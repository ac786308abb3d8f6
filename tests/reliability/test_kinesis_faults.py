"""The poller under faults that no emulator produces: throttling, expired iterators, dropped
connections.

Each fault is injected into a *real* boto3 client talking to a real moto server, through
botocore's event hooks: a ``before-send`` handler returns a canned AWS error response (or raises
a connection error) instead of sending the request. Everything else (serialisation, parsing of
the error, botocore's retry decision, moto's state) is the real thing. botocore's own retries are
off (``max_attempts=1``) so the reader sees every fault, as it would with the client it is meant
to be given. Time is a fake clock, so backoff is checked exactly and costs no wall time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from connectors.aws import make_client
from connectors.checkpoints import DynamoDbCheckpointStore, ensure_table
from connectors.kinesis import KinesisPollerSource, KinesisShardReader
from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION
from streamproc.errors import TransportError
from streamproc.records import Position, Record

# botocore retries off: the poller backs off by itself, and every injected fault is seen.
ONE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})

SHARD0 = "shardId-000000000000"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def error_response(request: AWSPreparedRequest, code: str, status: int = 400) -> AWSResponse:
    """What AWS sends for a JSON-protocol error (Kinesis and DynamoDB both use it)."""
    body = json.dumps({"__type": code, "message": f"injected {code}"}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "injected"}
    return AWSResponse(request.url, status, headers, _Body(body))


@dataclass
class Fault:
    """Answers the chosen calls of one operation with an error instead of sending them.

    ``when(n)`` decides for the n-th call (0-based). ``calls`` records the fake time of every
    call, faulty or not, so the spacing of retries can be checked.
    """

    code: str | None  # None: raise a connection error instead of answering
    when: Callable[[int], bool]
    clock: FakeClock
    status: int = 400
    calls: list[float] = field(default_factory=list)
    injected: int = 0

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        n = len(self.calls)
        self.calls.append(self.clock.now)
        if not self.when(n):
            return None  # send it for real
        self.injected += 1
        if self.code is None:
            raise EndpointConnectionError(endpoint_url=request.url)
        return error_response(request, self.code, self.status)


def inject(client: Any, operation: str, fault: Fault) -> Fault:
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-send.{service}.{operation}", fault)
    return fault


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kinesis(moto_endpoint: str) -> Any:
    return make_client(
        "kinesis",
        region=LOCAL_REGION,
        endpoint_url=moto_endpoint,
        config=ONE_ATTEMPT,
        **LOCAL_CREDENTIALS,
    )


@pytest.fixture
def ddb(moto_endpoint: str) -> Any:
    return make_client(
        "dynamodb",
        region=LOCAL_REGION,
        endpoint_url=moto_endpoint,
        config=ONE_ATTEMPT,
        **LOCAL_CREDENTIALS,
    )


@pytest.fixture
def store(ddb: Any, unique_name: str) -> DynamoDbCheckpointStore:
    ensure_table(ddb, unique_name)
    return DynamoDbCheckpointStore(ddb, unique_name)


@pytest.fixture
def stream(kinesis: Any, unique_name: str) -> list[bytes]:
    """A one-shard stream holding 30 records; returns their data in order."""
    kinesis.create_stream(StreamName=unique_name, ShardCount=1)
    data = [orjson.dumps({"n": n}) for n in range(30)]
    kinesis.put_records(
        StreamName=unique_name, Records=[{"PartitionKey": "k", "Data": d} for d in data]
    )
    return data


def drive(reader: Any, clock: FakeClock, count: int, step: float = 0.05) -> list[Record]:
    """Call the reader until ``count`` records came, advancing the fake clock when it idles."""
    records: list[Record] = []
    for _ in range(10_000):
        batch = reader.next_batch()
        if batch is None:
            clock.now += step
        else:
            records.extend(batch.records)
        if len(records) >= count:
            return records
    raise AssertionError(f"read {len(records)} of {count} records")


def source(kinesis: Any, stream: str, store: Any, clock: FakeClock, **options: Any) -> Any:
    return KinesisPollerSource(
        kinesis, stream=stream, checkpoints=store, clock=clock, min_call_interval=0.2, **options
    )


def test_throttled_reads_back_off_exponentially_then_read_everything(
    kinesis: Any, store: Any, clock: FakeClock, stream: list[bytes], unique_name: str
) -> None:
    throttled = 8
    fault = inject(
        kinesis,
        "GetRecords",
        Fault("ProvisionedThroughputExceededException", lambda n: n < throttled, clock),
    )
    [reader] = source(kinesis, unique_name, store, clock).poll_assignments()

    records = drive(reader, clock, 30)  # no exception escapes: None while backing off

    assert [r.data for r in records] == stream
    assert fault.injected == throttled and reader.throttled_calls == throttled
    gaps = [later - earlier for earlier, later in zip(fault.calls, fault.calls[1:], strict=False)]
    for attempt, gap in enumerate(gaps[:throttled]):
        ceiling = min(5.0, 0.2 * 2**attempt)  # exponential, capped at max_backoff
        assert max(ceiling / 2, 0.2) - 1e-9 <= gap <= ceiling + 0.05 + 1e-9, (attempt, gaps)
    assert gaps[throttled - 1] >= 2.5  # the cap was reached: 5 s with jitter in [2.5, 5]


def test_throttled_list_shards_means_no_assignments_yet(
    kinesis: Any, store: Any, clock: FakeClock, stream: list[bytes], unique_name: str
) -> None:
    inject(kinesis, "ListShards", Fault("LimitExceededException", lambda n: n == 0, clock))
    poller = source(kinesis, unique_name, store, clock)

    assert poller.poll_assignments() == []
    assert [r.shard_id for r in poller.poll_assignments()] == [SHARD0]


def test_expired_iterator_resumes_after_the_last_record(
    kinesis: Any, store: Any, clock: FakeClock, stream: list[bytes], unique_name: str
) -> None:
    fault = inject(
        kinesis, "GetRecords", Fault("ExpiredIteratorException", lambda n: n == 1, clock)
    )
    iterators: list[dict[str, Any]] = []
    kinesis.meta.events.register(
        "before-parameter-build.kinesis.GetShardIterator",
        lambda params, **_: iterators.append(dict(params)),
    )
    [reader] = source(
        kinesis, unique_name, store, clock, max_records_per_call=10
    ).poll_assignments()

    records = drive(reader, clock, 30)
    drive_idle(reader, clock)

    assert [r.data for r in records] == stream  # no duplicates, no gaps
    assert fault.injected == 1 and reader.expired_iterators == 1
    assert [i["ShardIteratorType"] for i in iterators] == ["TRIM_HORIZON", "AFTER_SEQUENCE_NUMBER"]
    assert iterators[1]["StartingSequenceNumber"] == records[9].sequence_number


def test_expired_latest_iterator_does_not_skip_what_arrived_meanwhile(
    kinesis: Any, store: Any, clock: FakeClock, stream: list[bytes], unique_name: str
) -> None:
    """Nothing read yet from a LATEST iterator, and it expires: reopening at LATEST would skip
    the records written in between, so the reader reopens AT_TIMESTAMP of its first opening."""
    [reader] = source(
        kinesis, unique_name, store, clock, start_position="LATEST"
    ).poll_assignments()
    while reader.next_batch() is None:  # iterator, then one empty read
        clock.now += 0.05
    inject(kinesis, "GetRecords", Fault("ExpiredIteratorException", lambda n: n == 0, clock))
    new = [b"new-%d" % i for i in range(5)]
    kinesis.put_records(
        StreamName=unique_name, Records=[{"PartitionKey": "k", "Data": d} for d in new]
    )

    records = drive(reader, clock, 5)
    drive_idle(reader, clock)

    assert [r.data for r in records] == new
    assert reader.expired_iterators == 1


def test_expired_iterator_inside_a_resumed_aggregate_keeps_the_skip(
    kinesis: Any, store: Any, clock: FakeClock, unique_name: str
) -> None:
    """Resumed at sub-record 2 of 5, the iterator expires before the first read: the new one
    must again start AT the aggregate and skip sub-records 0..2."""
    kinesis.create_stream(StreamName=unique_name, ShardCount=1)
    aggregator = RecordAggregator()
    for i in range(5):
        aggregator.add_user_record(f"k{i}", b"sub-%d" % i)
    pk, _, data = aggregator.clear_and_get().get_contents()
    sequence = kinesis.put_record(StreamName=unique_name, PartitionKey=pk, Data=data)[
        "SequenceNumber"
    ]
    kinesis.put_record(StreamName=unique_name, PartitionKey="k", Data=b"after")
    store.save(unique_name, SHARD0, Position.of(sequence, 2))
    inject(kinesis, "GetRecords", Fault("ExpiredIteratorException", lambda n: n == 0, clock))
    [reader] = source(kinesis, unique_name, store, clock).poll_assignments()

    records = drive(reader, clock, 3)
    drive_idle(reader, clock)

    assert [(r.data, r.sub_sequence_number) for r in records] == [
        (b"sub-3", 3),
        (b"sub-4", 4),
        (b"after", 0),
    ]


def test_connection_errors_back_off_and_are_counted(
    kinesis: Any, store: Any, clock: FakeClock, stream: list[bytes], unique_name: str
) -> None:
    inject(kinesis, "GetShardIterator", Fault(None, lambda n: n < 2, clock))
    fault = inject(kinesis, "GetRecords", Fault(None, lambda n: n < 3, clock))
    [reader] = source(kinesis, unique_name, store, clock).poll_assignments()

    records = drive(reader, clock, 30)

    assert [r.data for r in records] == stream
    assert reader.connection_errors == 5 and fault.injected == 3


def test_server_errors_are_retried_but_client_errors_are_not(
    kinesis: Any, clock: FakeClock, stream: list[bytes], unique_name: str
) -> None:
    reader = KinesisShardReader(kinesis, stream=unique_name, shard_id=SHARD0, clock=clock)
    inject(kinesis, "GetShardIterator", Fault("InternalFailure", lambda n: n == 0, clock, 500))
    inject(kinesis, "GetRecords", Fault("AccessDeniedException", lambda n: n == 0, clock))

    assert reader.next_batch() is None  # 500: backing off
    assert reader.throttled_calls == 1
    clock.now += 10
    assert reader.next_batch() is None  # the iterator, for real
    with pytest.raises(TransportError) as caught:
        reader.next_batch()
    assert not caught.value.retryable
    assert "AccessDeniedException" in str(caught.value) and SHARD0 in str(caught.value)


@pytest.mark.parametrize("operation", ["GetItem", "UpdateItem"])
def test_throttled_checkpoint_store_raises_a_retryable_error(
    ddb: Any, store: DynamoDbCheckpointStore, clock: FakeClock, operation: str
) -> None:
    inject(ddb, operation, Fault("ProvisionedThroughputExceededException", lambda n: True, clock))
    with pytest.raises(TransportError) as caught:
        store.save("s", SHARD0, Position(1)) if operation == "UpdateItem" else store.load(
            "s", SHARD0
        )
    assert caught.value.retryable


def drive_idle(reader: Any, clock: FakeClock) -> None:
    """A few more reads: nothing else may arrive."""
    for _ in range(20):
        batch = reader.next_batch()
        assert batch is None or batch.records == []
        clock.now += 1.0
