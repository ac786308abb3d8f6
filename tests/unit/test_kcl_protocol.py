"""The KCL child's protocol handling, against a scripted daemon over real pipes.

amazon_kclpy's own ``KCLProcess`` (set up as the child does, by
``connectors.kcl_protocol.kcl_process``) runs our ``ShardWorker`` on one end of a pair of pipes;
the test plays the MultiLangDaemon on the other end, line by line, as the Java daemon does. This is
where the checkpoint errors the real daemon cannot be made to produce on demand are injected
(ThrottlingException, ShutdownException), together with sinks that hold their acknowledgements
(tests/unit/memory.py). The real daemon is exercised in tests/integration/test_kcl.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import queue
import threading
from collections import deque
from typing import Any

import orjson
import pytest

import connectors.kcl as kcl_child
from connectors.kcl import _Guard
from connectors.kcl_protocol import kcl_process
from connectors.kcl_worker import KclShardReader, KclSource, ShardWorker
from streamproc.errors import TransportError
from streamproc.interfaces import RestorePoint
from streamproc.processor import ShardProcessor
from streamproc.records import Position, Record, RecordBatch
from streamproc.ruleset import RuleSet, rule
from streamproc.runtime import Runtime, RuntimeSettings
from tests.unit.memory import MemoryCheckpointStore, MemoryDeadLetter, MemorySink

BIG = rule(name="big", version=1, condition="amount > 100", key="card_id", severity="HIGH")
SHARD = "shardId-000000000007"


class FakeDaemon:
    """The MultiLangDaemon's side of the protocol: sends actions, answers checkpoints."""

    def __init__(self, processor: Any) -> None:
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()
        self._out = os.fdopen(self._to_child, "w", buffering=1)
        self._in = os.fdopen(self._from_child, "r")
        self._process = kcl_process(
            processor,
            input_file=os.fdopen(child_in, "r"),
            output_file=os.fdopen(child_out, "w", buffering=1),
        )
        self._thread = threading.Thread(target=self._process.run, daemon=True)
        self._thread.start()
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.checkpoints: list[tuple[str | None, int | None]] = []
        self.refuse: deque[str] = deque()  # errors for the next checkpoint requests

    def _read(self) -> None:
        for line in self._in:
            self._lines.put(line)
        self._lines.put("")

    def send(self, message: dict[str, Any]) -> None:
        """One action; answers every checkpoint request until the child reports status."""
        self._out.write(json.dumps(message) + "\n")
        while True:
            try:
                line = self._lines.get(timeout=10)
            except queue.Empty:
                alive = self._thread.is_alive()
                raise AssertionError(f"no answer from the child in 10 s (alive: {alive})") from None
            assert line, "the child closed its output"
            if not line.strip():
                continue
            reply = json.loads(line)
            if reply["action"] == "status":
                assert reply["responseFor"] == message["action"]
                return
            assert reply["action"] == "checkpoint", reply
            seq, sub = reply["sequenceNumber"], reply["subSequenceNumber"]
            answer: dict[str, Any] = {
                "action": "checkpoint",
                "sequenceNumber": seq,
                "subSequenceNumber": sub,
            }
            if self.refuse:
                answer["error"] = self.refuse.popleft()
            else:
                self.checkpoints.append((seq, sub))
            self._out.write(json.dumps(answer) + "\n")

    def close(self) -> None:
        self._out.close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


def record(seq: int, amount: float, sub: int = 0) -> dict[str, Any]:
    data = orjson.dumps({"tx_id": f"tx-{seq}-{sub}", "card_id": "c1", "amount": amount})
    return {
        "action": "record",
        "data": base64.b64encode(data).decode(),
        "partitionKey": "c1",
        "sequenceNumber": str(seq),
        "subSequenceNumber": sub,
        "approximateArrivalTimestamp": 1_780_000_000_000,
    }


def process(*records: dict[str, Any]) -> dict[str, Any]:
    return {"action": "processRecords", "records": list(records), "millisBehindLatest": 0}


class Harness:
    def __init__(
        self, *, sink_accepting: bool = True, max_inflight: int = 1, linger_s: float = 0.0
    ) -> None:
        self.sink = MemorySink(name="memory", accepting=sink_accepting)
        self.dead_letter = MemoryDeadLetter()
        self.sources: list[KclSource] = []
        self.now = 1000.0  # the runtime's clock, moved by the test

        def build(shard_id: str, checkpoint: Position | None) -> Any:
            source = KclSource("stream", None)
            reader = KclShardReader(shard_id)
            source.attach(reader)
            processor = ShardProcessor(
                RuleSet((BIG,)), default_sinks=("memory",), shard_id=shard_id
            )
            runtime = Runtime(
                source,
                lambda _s: processor,
                {"memory": self.sink},
                self.dead_letter,
                settings=RuntimeSettings(
                    checkpoint_interval_s=0.0, max_inflight_records=max_inflight
                ),
                clock=lambda: self.now,
            )
            self.sources.append(source)
            return runtime, source, reader

        self.worker = ShardWorker(build, linger_s=linger_s, drain_timeout_s=0.5, report_every_s=0.2)
        self.daemon = FakeDaemon(self.worker)
        self.daemon.send(
            {
                "action": "initialize",
                "shardId": SHARD,
                "sequenceNumber": "TRIM_HORIZON",
                "subSequenceNumber": 0,
            }
        )


@pytest.fixture
def harness() -> Any:
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        made.append(Harness(**kw))
        return made[-1]

    yield make
    for h in made:
        h.daemon.close()


def test_checkpoints_the_exact_sub_sequence_of_the_last_acknowledged_record(harness: Any) -> None:
    h = harness()
    h.daemon.send(process(record(10, 500.0), record(11, 5.0, sub=0), record(11, 700.0, sub=1)))
    assert h.daemon.checkpoints[-1] == ("11", 1)
    assert len(h.sink.delivered) == 2


def test_nothing_is_checkpointed_past_an_unacknowledged_alert(harness: Any) -> None:
    """The sink holds its acknowledgements: the records before the alert are checkpointed, the
    alert's record and everything after it are not; and the call blocks while the in-flight
    budget (here 1 record) is used up, so the daemon stops fetching for the shard."""
    h = harness(sink_accepting=False)
    h.daemon.send(process(record(1, 5.0), record(2, 6.0)))
    assert h.daemon.checkpoints[-1] == ("2", 0)
    h.sink.accepting = False
    blocked = threading.Thread(target=h.daemon.send, args=(process(record(3, 900.0)),))
    blocked.start()
    blocked.join(timeout=0.5)
    assert blocked.is_alive()  # backpressure: processRecords has not returned
    assert h.daemon.checkpoints[-1] == ("2", 0)
    h.sink.accepting = True
    blocked.join(timeout=5)
    assert not blocked.is_alive()
    h.daemon.send(process(record(4, 1.0)))
    assert h.daemon.checkpoints[-1] == ("4", 0)


@pytest.mark.timeout(30)
def test_a_shard_behind_its_tip_does_not_wait_for_deliveries(harness: Any) -> None:
    """With the daemon behind the shard's tip (millisBehindLatest > 0) the next batch is ready:
    processRecords returns without lingering for the sink (here: never, the linger is 60 s and
    the sink holds its acknowledgements), and the delivery goes on in the next call."""
    h = harness(sink_accepting=False, max_inflight=1000, linger_s=60.0)
    behind = process(record(1, 900.0))
    behind["millisBehindLatest"] = 5_000
    h.daemon.send(behind)  # returns: the test would time out if it lingered
    assert h.daemon.checkpoints == []  # the alert is not acknowledged yet
    h.sink.accepting = True
    caught_up = process(record(2, 1.0))
    caught_up["millisBehindLatest"] = 5_000
    h.daemon.send(caught_up)
    assert len(h.sink.delivered) == 1
    assert h.daemon.checkpoints[-1] == ("2", 0)


def test_a_throttled_checkpoint_is_retried_on_a_later_call(harness: Any) -> None:
    h = harness()
    h.daemon.refuse.extend(["ThrottlingException", "ThrottlingException"])
    h.daemon.send(process(record(1, 500.0)))
    assert h.daemon.checkpoints == []  # refused, not lost
    h.daemon.send(process(record(2, 1.0)))
    assert h.daemon.checkpoints == []  # backing off (0.2 s): not asked again yet
    h.now += 0.25
    h.daemon.send(process(record(3, 1.0)))
    assert h.daemon.checkpoints == []  # refused again: now 0.4 s
    h.now += 0.3
    h.daemon.send(process(record(4, 1.0)))
    assert h.daemon.checkpoints == []
    h.now += 0.2
    h.daemon.send(process(record(5, 1.0)))
    assert h.daemon.checkpoints == [("5", 0)]
    assert h.sources[0].lost is False


def test_shutdown_exception_stops_the_shard_without_further_checkpoints(harness: Any) -> None:
    h = harness()
    h.daemon.refuse.append("ShutdownException")
    h.daemon.send(process(record(1, 500.0)))
    assert h.sources[0].lost
    delivered = len(h.sink.delivered)
    h.daemon.send(process(record(2, 800.0)))  # the lease is gone: not processed
    assert h.daemon.checkpoints == [] and len(h.sink.delivered) == delivered


def test_shard_end_waits_for_every_alert_then_checkpoints_without_a_position(
    harness: Any,
) -> None:
    """The daemon sends shardEnded once per child: the end must not be given up on while a sink
    is slow (the children shards wait for it), however long that takes."""
    h = harness(max_inflight=100)
    h.sink.accepting = False
    h.daemon.send(process(record(1, 500.0)))
    ending = threading.Thread(target=h.daemon.send, args=({"action": "shardEnded"},))
    ending.start()
    ending.join(timeout=1.0)  # twice the drain timeout: still waiting, nothing checkpointed
    assert ending.is_alive() and h.daemon.checkpoints == []
    h.sink.accepting = True
    ending.join(timeout=5)
    assert not ending.is_alive()
    assert h.daemon.checkpoints == [(None, None)]  # the daemon's SHARD_END
    assert h.sources[0].ended and h.worker.done


def test_shutdown_requested_delivers_held_alerts_then_checkpoints(harness: Any) -> None:
    h = harness(max_inflight=100)
    h.sink.accepting = False
    h.daemon.send(process(record(1, 500.0), record(2, 900.0)))
    assert h.daemon.checkpoints == []  # the alerts are not acknowledged yet
    h.sink.accepting = True
    h.daemon.send({"action": "shutdownRequested"})
    assert h.daemon.checkpoints == [("2", 0)]
    assert len(h.sink.delivered) == 2 and h.worker.done


def test_lease_lost_drops_pending_work_without_checkpointing(harness: Any) -> None:
    h = harness(max_inflight=100)
    h.sink.accepting = False
    h.daemon.send(process(record(1, 500.0)))
    h.daemon.send({"action": "leaseLost"})
    h.sink.accepting = True
    assert h.daemon.checkpoints == [] and h.sources[0].lost and h.worker.done


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def checkpoint(self, *args: Any) -> None:
        self.calls.append(args)


def test_positions_up_to_the_daemons_own_checkpoint_are_not_checkpointed_again() -> None:
    """Records replayed to rebuild window state end at the daemon's checkpoint: the runtime
    settles them, but asking the daemon to checkpoint there again (or lower) is refused. A
    window close there (idle close on a quiet shard) is still stored, at the daemon's position,
    so the next owner does not reopen those windows."""
    store = MemoryCheckpointStore()
    source = KclSource("stream", store, floor=Position.of("50"))
    source.checkpointer = Recorder()
    source.checkpoint(SHARD, Position.of("40"))
    source.checkpoint(SHARD, Position.of("50"))
    assert source.checkpointer.calls == [] and store.saves == []
    closed = RestorePoint(Position.of("30"), {"velocity": 123}, 1)
    source.checkpoint(SHARD, Position.of("45"), restore=closed)
    assert source.checkpointer.calls == []
    assert store.saves == [(Position.of("50"), closed)]
    source.checkpoint(SHARD, Position.of("51"), restore=closed)
    assert source.checkpointer.calls == [("51", 0)]
    assert store.saves[-1] == (Position.of("51"), closed)


class ScriptedReplay:
    """A ShardReader that returns scripted batches (the replay of a KclShardReader)."""

    def __init__(self, batches: list[Any], finished_after: bool = False) -> None:
        self.batches = batches
        self.finished_after = finished_after
        self.closed = False

    @property
    def finished(self) -> bool:
        return self.finished_after and not self.batches

    def next_batch(self) -> Any:
        if not self.batches:
            return None
        item = self.batches.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def rec(seq: int) -> Record:
    return Record(b"{}", "k", str(seq), 0, 0, SHARD)


def test_the_replay_ends_at_the_daemons_checkpoint_and_drops_what_follows() -> None:
    replay = ScriptedReplay(
        [RecordBatch(SHARD, [rec(1), rec(2)], 10), RecordBatch(SHARD, [rec(3), rec(4)], 0)]
    )
    reader = KclShardReader(SHARD, replay=replay, restore_until=Position.of("3"))
    assert [r.sequence_number for r in reader.next_batch().records] == ["1", "2"]  # type: ignore[union-attr]
    assert [r.sequence_number for r in reader.next_batch().records] == ["3"]  # type: ignore[union-attr]
    assert not reader.replaying and replay.closed and reader.restore_until == Position.of("3")
    reader.push(RecordBatch(SHARD, [rec(5)]))
    assert [r.sequence_number for r in reader.next_batch().records] == ["5"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "script",
    [
        [RecordBatch(SHARD, [rec(1)], 0), RecordBatch(SHARD, [], 0)],  # caught up, no checkpoint
        [RecordBatch(SHARD, [rec(1)], 5), TransportError("gone", retryable=False)],
    ],
    ids=["caught-up-without-the-checkpoint", "read-error"],
)
def test_a_replay_that_cannot_reach_the_checkpoint_ends_with_a_warning(
    script: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    reader = KclShardReader(SHARD, replay=ScriptedReplay(script), restore_until=Position.of("9"))
    while reader.replaying:
        reader.next_batch()
    assert reader.restore_until is None
    assert "rebuilt only partly" in caplog.text


def test_an_unexpected_error_exits_the_child_instead_of_acknowledging_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """amazon_kclpy would log the exception and report the batch done; the guard exits first."""

    class Broken:
        shard_id = SHARD

        def process_records(self, _input: Any) -> None:
            raise RuntimeError("boom")

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(kcl_child.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        _Guard(Broken()).process_records(object())  # type: ignore[arg-type]
    assert exits == [1]


def test_the_fast_parse_of_process_records_gives_the_records_amazon_kclpy_would() -> None:
    """connectors.kcl_protocol parses processRecords with orjson and builds our records from the
    daemon's JSON objects; the result equals what the worker builds from amazon_kclpy's own
    message objects (a missing or null sub-sequence number is 0). Other actions are amazon_kclpy's
    message objects, as before."""
    from amazon_kclpy import dispatch, messages

    from connectors.kcl_protocol import RawProcessRecords, load_action, records_of

    def original(line: str) -> Any:
        return json.loads(line, object_hook=dispatch.message_decode)

    message = {
        "action": "processRecords",
        "millisBehindLatest": 1200,
        "records": [
            {
                "action": "record",
                "data": base64.b64encode(b'{"amount": 5}').decode(),
                "partitionKey": "card-1",
                "sequenceNumber": "49680613209722956447573071511916626971671785493216886786",
                "subSequenceNumber": 3,
                "approximateArrivalTimestamp": 1767225600123,
            },
            {
                "action": "record",
                "data": base64.b64encode(b"not json \xff").decode(),
                "partitionKey": "card-2",
                "sequenceNumber": "49680613209722956447573071511916626971671785493216886787",
                "subSequenceNumber": None,
                "approximateArrivalTimestamp": 1767225600456,
            },
            {  # numbers as other writers might send them: int() makes them ours
                "action": "record",
                "data": base64.b64encode(b"{}").decode(),
                "partitionKey": "card-3",
                "sequenceNumber": "49680613209722956447573071511916626971671785493216886788",
                "subSequenceNumber": 0,
                "approximateArrivalTimestamp": 1767225600789.0,
            },
            {
                "action": "record",
                "data": base64.b64encode(b"[1]").decode(),
                "partitionKey": "card-4",
                "sequenceNumber": "49680613209722956447573071511916626971671785493216886789",
                "subSequenceNumber": "7",
                "approximateArrivalTimestamp": "1767225600999",
            },
        ],
    }
    line = json.dumps(message)
    fast = load_action(line, original)
    assert isinstance(fast, RawProcessRecords)
    assert fast.millis_behind_latest == 1200 and fast.action == "processRecords"
    theirs = original(line)
    assert not isinstance(theirs, RawProcessRecords)
    expected = records_of(theirs, SHARD)  # through amazon_kclpy's messages.Record objects
    assert fast.to_records(SHARD) == expected
    assert [r.sub_sequence_number for r in expected] == [3, 0, 0, 7]
    assert [r.arrival_ms - 1767225600000 for r in expected] == [123, 456, 789, 999]
    assert all(r.arrival_ms.__class__ is int for r in fast.to_records(SHARD))
    # A record without the number at all (amazon_kclpy's own objects raise KeyError there).
    records: list[dict[str, Any]] = message["records"]  # type: ignore[assignment]
    del records[0]["subSequenceNumber"]
    (first, *_) = load_action(json.dumps(message), original).to_records(SHARD)
    assert first == dataclasses.replace(expected[0], sub_sequence_number=0)
    # Code that reads amazon_kclpy's record objects still gets them.
    assert [r.sequence_number for r in fast.records] == [r.sequence_number for r in theirs.records]
    assert all(isinstance(r, messages.Record) for r in fast.records)

    initialize = json.dumps(
        {"action": "initialize", "shardId": SHARD, "sequenceNumber": "1", "subSequenceNumber": 0}
    )
    assert isinstance(load_action(initialize, original), messages.InitializeInput)
    with pytest.raises(ValueError):  # a broken line fails as amazon_kclpy's loader fails
        load_action('{"action": "processRecords", ', original)
