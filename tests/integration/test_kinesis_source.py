"""The boto3 poller source and DynamoDB checkpoints against real emulators.

Everything here talks to a real moto server over HTTP (the ``moto_endpoint`` fixture) with real
boto3 clients; the resharding tests at the end also use kinesis-mock, whose resharding works.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aws_kinesis_agg import MAGIC, deaggregator
from aws_kinesis_agg.aggregator import RecordAggregator

from connectors.checkpoints import DynamoDbCheckpointStore, ensure_table
from connectors.kinesis import KinesisPollerSource, KinesisShardReader
from streamproc.errors import ConfigError, TransportError
from streamproc.interfaces import Checkpoint, ShardReader
from streamproc.records import Position

FAST = {"min_call_interval": 0.0, "idle_call_interval": 0.01}
SHARD0, SHARD1, SHARD2 = (f"shardId-00000000000{i}" for i in range(3))


def ids(readers: Sequence[ShardReader]) -> list[str]:
    return sorted(reader.shard_id for reader in readers)


@pytest.fixture
def kit(kinesis_kit: Any) -> Any:
    return kinesis_kit


@pytest.fixture
def kinesis(kinesis_kit: Any) -> Any:
    return kinesis_kit.client


@pytest.fixture
def store(checkpoint_store: DynamoDbCheckpointStore) -> DynamoDbCheckpointStore:
    return checkpoint_store


# ---------------------------------------------------------------------------------- reading


def test_reads_every_record_of_every_shard_in_order(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    kit.create_stream(unique_name, 3)
    before_ms = int(time.time() * 1000) - 1000  # moto's clock granularity and skew
    puts = kit.put(unique_name, [(f"card-{i % 17}", b'{"n":%d}' % i) for i in range(90)])
    after_ms = int(time.time() * 1000) + 1000
    source = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)

    readers = source.poll_assignments()
    assert ids(readers) == [SHARD0, SHARD1, SHARD2]
    assert source.poll_assignments() == []  # each shard is handed out once
    got = kit.read_exactly(readers, 90)

    for shard_id, records in got.items():
        expected = [p for p in puts if p.shard_id == shard_id]
        assert [(r.sequence_number, r.partition_key, r.data) for r in records] == [
            (p.sequence_number, p.partition_key, p.data) for p in expected
        ]
        assert all(r.sub_sequence_number == 0 and r.shard_id == shard_id for r in records)
        assert all(before_ms <= r.arrival_ms <= after_ms for r in records)
        sequence_numbers = [int(r.sequence_number) for r in records]
        assert sequence_numbers == sorted(sequence_numbers)
    assert not any(reader.finished for reader in readers)  # open shards never finish


def test_latest_reads_only_records_written_after_the_start(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    kit.create_stream(unique_name, 2)
    kit.put(unique_name, [(f"old-{i}", b"old") for i in range(20)])
    source = KinesisPollerSource(
        kinesis, stream=unique_name, checkpoints=store, start_position="LATEST", **FAST
    )
    readers = source.poll_assignments()
    kit.prime(readers)
    new = kit.put(unique_name, [(f"new-{i}", b"new-%d" % i) for i in range(20)])

    got = kit.read_exactly(readers, 20)

    assert sorted(r.data for rs in got.values() for r in rs) == sorted(p.data for p in new)


def test_at_timestamp_reads_from_that_moment(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    kit.create_stream(unique_name, 2)
    kit.put(unique_name, [(f"early-{i}", b"early") for i in range(10)])
    time.sleep(0.05)
    moment = datetime.now(UTC)
    time.sleep(0.05)
    late = kit.put(unique_name, [(f"late-{i}", b"late-%d" % i) for i in range(10)])
    at = {"start_position": "AT_TIMESTAMP", "start_timestamp": moment}
    source = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **at, **FAST)

    got = kit.read_exactly(source.poll_assignments(), 10)

    assert sorted(r.data for rs in got.values() for r in rs) == sorted(p.data for p in late)


@pytest.mark.parametrize(
    ("start", "timestamp", "key"),
    [
        ("AT_TIMESTAMP", None, "start_timestamp"),
        ("AT_TIMESTAMP", datetime(2026, 1, 1), "start_timestamp"),  # naive: ambiguous
        ("EARLIEST", None, "start_position"),
    ],
)
def test_invalid_start_is_a_config_error(
    kinesis: Any, store: DynamoDbCheckpointStore, start: Any, timestamp: Any, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        KinesisPollerSource(
            kinesis, stream="s", checkpoints=store, start_position=start, start_timestamp=timestamp
        )
    assert caught.value.key == key


def test_unknown_shard_or_stream_is_a_permanent_transport_error(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    kit.create_stream(unique_name, 1)
    reader = KinesisShardReader(kinesis, stream=unique_name, shard_id="shardId-000000000042")
    with pytest.raises(TransportError) as caught:
        reader.next_batch()
    assert not caught.value.retryable
    assert unique_name in str(caught.value) and "shardId-000000000042" in str(caught.value)
    assert "ResourceNotFoundException" in str(caught.value)

    gone = KinesisPollerSource(kinesis, stream=unique_name + "-gone", checkpoints=store)
    with pytest.raises(TransportError) as caught:
        gone.poll_assignments()
    assert not caught.value.retryable and unique_name + "-gone" in str(caught.value)


# ---------------------------------------------------------------------------------- checkpoints


def test_resume_after_checkpoint_reads_each_record_once(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    shards = kit.create_stream(unique_name, 2)
    for shard in shards:
        kit.put(unique_name, [(f"k{i}", b"%d" % i) for i in range(12)], kit.middle_hash_key(shard))
    first = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)
    got = kit.read_exactly(first.poll_assignments(), 24)
    first.checkpoint(SHARD0, got[SHARD0][4].position)
    first.checkpoint(SHARD1, got[SHARD1][9].position)
    first.close()

    # A checkpoint wins over the configured start position.
    second = KinesisPollerSource(
        kinesis, stream=unique_name, checkpoints=store, start_position="LATEST", **FAST
    )
    resumed = kit.read_exactly(second.poll_assignments(), 7 + 2)

    assert resumed[SHARD0] == got[SHARD0][5:]
    assert resumed[SHARD1] == got[SHARD1][10:]


def test_checkpoint_never_moves_backwards(store: DynamoDbCheckpointStore) -> None:
    assert store.load("s", SHARD0) is None
    assert store.try_save("s", SHARD0, Position(9))
    assert store.try_save("s", SHARD0, Position(10))  # 10 > 9 as numbers, not as strings
    assert not store.try_save("s", SHARD0, Position(9, 7))
    store.save("s", SHARD0, Position(3))  # stale writer: a no-op, not an error
    assert not store.try_save("s", SHARD0, Position(10))  # same position: nothing to do
    assert store.load("s", SHARD0) == Checkpoint(SHARD0, Position(10))

    big = Position(49680604793243312560527652911024135180874765542111576066, 3)
    assert store.try_save("s", SHARD1, big)
    assert not store.try_save("s", SHARD1, Position(big.sequence_number - 1, 9))
    assert store.load("s", SHARD1) == Checkpoint(SHARD1, big)


def test_ending_a_shard_is_final(store: DynamoDbCheckpointStore) -> None:
    assert store.try_save("s", SHARD0, Position(5, 2))
    assert store.try_save("s", SHARD0, Position(5, 2), shard_ended=True)  # same position: ok
    assert not store.try_save("s", SHARD0, Position(6))  # nothing after the end
    assert not store.try_save("s", SHARD0, None, shard_ended=True)
    assert store.load("s", SHARD0) == Checkpoint(SHARD0, Position(5, 2), shard_ended=True)

    assert store.try_save("s", SHARD1, Position(8))
    assert store.try_save("s", SHARD1, None, shard_ended=True)  # ended, position kept
    assert store.load("s", SHARD1) == Checkpoint(SHARD1, Position(8), shard_ended=True)
    assert store.try_save("s", SHARD2, None, shard_ended=True)  # an empty closed shard
    assert store.load("s", SHARD2) == Checkpoint(SHARD2, None, shard_ended=True)
    assert not store.try_save("s", "shardId-000000000003", None)  # nothing to record


def test_ensure_table_is_idempotent_and_checks_the_schema(
    aws_client: Any, unique_name: str
) -> None:
    ddb = aws_client("dynamodb")
    ensure_table(ddb, unique_name)
    ensure_table(ddb, unique_name)
    assert ddb.describe_table(TableName=unique_name)["Table"]["TableStatus"] == "ACTIVE"

    ddb.create_table(
        TableName=unique_name + "-other",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    with pytest.raises(ConfigError, match="hash key 'stream'"):
        ensure_table(ddb, unique_name + "-other")


def test_missing_table_is_a_permanent_error(aws_client: Any, unique_name: str) -> None:
    store = DynamoDbCheckpointStore(aws_client("dynamodb"), unique_name + "-missing")
    with pytest.raises(TransportError, match="does not exist") as caught:
        store.save("s", SHARD0, Position(1))
    assert not caught.value.retryable


# ---------------------------------------------------------------------------------- KPL


def aggregate(entries: Sequence[tuple[str, bytes]]) -> tuple[str, bytes]:
    aggregator = RecordAggregator()
    for partition_key, data in entries:
        assert aggregator.add_user_record(partition_key, data) is None  # fits in one record
    partition_key, _explicit_hash_key, data = aggregator.clear_and_get().get_contents()
    return partition_key, data


def test_kpl_aggregates_come_back_as_sub_records_and_resume_inside_one(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    kit.create_stream(unique_name, 1)
    users = [(f"card-{i}", orjson.dumps({"i": i})) for i in range(5)]
    puts = kit.put(unique_name, [("plain", b"before"), aggregate(users), ("plain", b"after")])
    source = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)

    records = kit.read_exactly(source.poll_assignments(), 7)[SHARD0]

    aggregate_seq = puts[1].sequence_number
    assert [(r.sequence_number, r.sub_sequence_number) for r in records] == [
        (puts[0].sequence_number, 0),
        *((aggregate_seq, sub) for sub in range(5)),
        (puts[2].sequence_number, 0),
    ]
    assert [(r.partition_key, r.data) for r in records[1:6]] == users
    assert records[0].data == b"before" and records[6].data == b"after"

    # Sub-records 0..2 of the aggregate are done: a restart yields exactly 3, 4 and "after".
    source.checkpoint(SHARD0, Position.of(aggregate_seq, 2))
    again = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)
    resumed = kit.read_exactly(again.poll_assignments(), 3)[SHARD0]
    assert resumed == records[4:]


def _bad_index_aggregate() -> bytes:
    """Valid header, digest and protobuf, but a partition key index that does not exist."""
    message = deaggregator.messages_pb2.AggregatedRecord()
    message.partition_key_table.append("pk")
    entry = message.records.add()
    entry.partition_key_index = 3
    entry.data = b'{"lost": "unless guarded"}'
    body = message.SerializeToString()
    return bytes(MAGIC + body + hashlib.md5(body).digest())


def test_malformed_aggregates_pass_through_whole(
    kit: Any,
    kinesis: Any,
    store: DynamoDbCheckpointStore,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    garbage = bytes(MAGIC) + b"\x00garbage that is not an aggregate at all\xff" * 2
    bad_protobuf = bytes(MAGIC) + b"\xff\xff\xff" + hashlib.md5(b"\xff\xff\xff").digest()
    bad_index = _bad_index_aggregate()
    # The library on its own drops the last one (and prints it to stderr).
    boto3_record = {"Data": bad_index, "PartitionKey": "p", "SequenceNumber": "1"}
    boto3_record["ApproximateArrivalTimestamp"] = None
    assert list(deaggregator.iter_deaggregate_records(boto3_record, data_format="Boto3")) == []
    capsys.readouterr()
    kit.create_stream(unique_name, 1)
    entries = [("p1", garbage), ("p2", bad_protobuf), ("p3", bad_index), ("p4", b"{}")]
    kit.put(unique_name, entries)
    source = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)

    with caplog.at_level(logging.WARNING, logger="connectors.kinesis"):
        [reader] = source.poll_assignments()
        records = kit.read_exactly([reader], 4)[SHARD0]

    assert [(r.partition_key, r.data, r.sub_sequence_number) for r in records] == [
        (pk, data, 0) for pk, data in entries
    ]
    assert isinstance(reader, KinesisShardReader) and reader.malformed_aggregates == 3
    assert "could not be de-aggregated" in caplog.text
    assert capsys.readouterr().err == ""  # nothing leaked to stderr by the library


# ---------------------------------------------------------------------------------- resharding


def test_children_wait_until_the_parent_is_checkpointed_as_ended(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    """Moto registers the children of a split (with ParentShardId) though writes still land in
    the parent, so this checks the assignment rule only; the kinesis-mock test reads across."""
    [parent] = kit.create_stream(unique_name, 1)
    source = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)
    assert ids(source.poll_assignments()) == [SHARD0]
    kit.split(unique_name, parent)
    listed = kinesis.list_shards(StreamName=unique_name)["Shards"]
    assert [s.get("ParentShardId") for s in listed] == [None, SHARD0, SHARD0]

    assert source.poll_assignments() == []
    source.checkpoint(SHARD0, Position(7))
    assert source.poll_assignments() == []
    source.checkpoint(SHARD0, Position(7), shard_ended=True)
    children = source.poll_assignments()
    assert ids(children) == [SHARD1, SHARD2]
    # The parent was read, so its children start at their first record.
    assert all(isinstance(r, KinesisShardReader) and r.start == "TRIM_HORIZON" for r in children)

    # After a restart the ended parent is never read again; AT_TIMESTAMP applies to children.
    at = {"start_position": "AT_TIMESTAMP", "start_timestamp": datetime.now(UTC)}
    restarted = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **at, **FAST)
    children = restarted.poll_assignments()
    assert ids(children) == [SHARD1, SHARD2]
    assert all(isinstance(r, KinesisShardReader) and r.start == "AT_TIMESTAMP" for r in children)


def test_where_children_start_without_a_parent_checkpoint(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    [parent] = kit.create_stream(unique_name, 1)
    kit.split(unique_name, parent)

    # TRIM_HORIZON: the closed parent first, then its children.
    trim = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)
    assert ids(trim.poll_assignments()) == [SHARD0]
    # LATEST: everything in the closed parent predates "now"; the children start at LATEST.
    latest = KinesisPollerSource(
        kinesis, stream=unique_name, checkpoints=store, start_position="LATEST", **FAST
    )
    children = latest.poll_assignments()
    assert ids(children) == [SHARD1, SHARD2]
    assert all(isinstance(r, KinesisShardReader) and r.start == "LATEST" for r in children)


def test_a_trimmed_parent_does_not_block_its_children(
    kit: Any, kinesis: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    """The parent is removed from ListShards with an after-call hook, as retention would."""
    [parent] = kit.create_stream(unique_name, 1)
    kit.split(unique_name, parent)

    def drop_parent(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Shards"] = [s for s in parsed["Shards"] if s["ShardId"] != SHARD0]

    kinesis.meta.events.register("after-call.kinesis.ListShards", drop_parent)
    source = KinesisPollerSource(kinesis, stream=unique_name, checkpoints=store, **FAST)
    assert ids(source.poll_assignments()) == [SHARD1, SHARD2]


def test_list_shards_pages_with_next_token_only(
    kinesis_mock_kit: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    """AWS (and kinesis-mock) refuse StreamName together with NextToken; moto needs both, but
    never pages below 10,000 shards, so paging is checked against kinesis-mock."""
    kit = kinesis_mock_kit
    kinesis = kit.client
    kit.create_stream(unique_name, 3)
    calls: list[dict[str, Any]] = []
    kinesis.meta.events.register(
        "before-call.kinesis.ListShards", lambda params, **_: calls.append(dict(params))
    )
    source = KinesisPollerSource(
        kinesis, stream=unique_name, checkpoints=store, shards_page_size=1, **FAST
    )
    assert ids(source.poll_assignments()) == [SHARD0, SHARD1, SHARD2]
    assert len(calls) >= 3 and all("StreamName" not in c for c in calls[1:])


def test_resharding_keeps_each_key_in_order(
    kinesis_mock_kit: Any, store: DynamoDbCheckpointStore, unique_name: str
) -> None:
    """A real split on kinesis-mock: the parent is read to its end and checkpointed as ended
    before any record of a child is processed, so every partition key stays in order."""
    kit = kinesis_mock_kit
    kinesis = kit.client
    [parent] = kit.create_stream(unique_name, 1)
    keys = [f"card-{i}" for i in range(8)]
    counters = dict.fromkeys(keys, 0)

    def write(n: int) -> None:
        entries = []
        for i in range(n):
            key = keys[i % len(keys)]
            entries.append((key, orjson.dumps({"key": key, "n": counters[key]})))
            counters[key] += 1
        kit.put(unique_name, entries)

    write(100)
    kit.split(unique_name, parent)
    write(100)
    # Small reads, so the parent takes several calls while its children would have records.
    source = KinesisPollerSource(
        kinesis, stream=unique_name, checkpoints=store, max_records_per_call=15, **FAST
    )

    # A miniature runtime loop: read, "process", checkpoint a finished shard as ended.
    log: list[tuple[str, str, int]] = []  # (shard, key, n) in processing order
    ended_at: dict[str, int] = {}  # shard -> number of records processed when it ended
    last: dict[str, Position | None] = {}
    readers: list[ShardReader] = []
    deadline = time.monotonic() + 30
    while len(log) < 200 or len(ended_at) < 1:
        assert time.monotonic() < deadline, f"processed {len(log)} of 200"
        readers += source.poll_assignments()
        for reader in sorted(readers, key=lambda r: r.shard_id, reverse=True):  # children first
            batch = reader.next_batch()
            if batch is not None:
                for record in batch.records:
                    event = orjson.loads(record.data)
                    log.append((reader.shard_id, event["key"], event["n"]))
                    last[reader.shard_id] = record.position
            if reader.finished:
                source.checkpoint(reader.shard_id, last.get(reader.shard_id), shard_ended=True)
                ended_at[reader.shard_id] = len(log)
                readers.remove(reader)
        time.sleep(0.005)
    kit.read_exactly(readers, 0)  # nothing more arrives

    assert len(log) == 200
    for key in keys:
        assert [n for _, k, n in log if k == key] == list(range(counters[key]))
    assert sum(1 for shard, _, _ in log if shard == SHARD0) == 100
    assert ended_at[SHARD0] == 100  # every child record came after the parent's end
    assert {shard for shard, _, _ in log[100:]} <= {SHARD1, SHARD2}
