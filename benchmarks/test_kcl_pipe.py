"""The KCL child's production path per shard: recorded ``processRecords`` messages through a pipe.

``streamproc kcl`` runs one child process per shard; the Java MultiLangDaemon writes each batch
of records to the child's stdin as one JSON line and waits for ``{"action":"status",...}``
before it sends the next (answering the child's checkpoint requests in between). This
benchmark plays the daemon with a *recording*: the data set encoded, before the timed part, as
the lines the daemon writes (``action``, ``records``, ``millisBehindLatest``; each record with
base64 ``data``, ``partitionKey``, a 56-digit ``sequenceNumber`` shaped like Kinesis's,
``approximateArrivalTimestamp``, ``subSequenceNumber`` and its ``action``, as Jackson writes
``JsonFriendlyRecord``). A message holds ``kcl.max_records`` records (10,000 by default: what
GetRecords returns while a shard catches up; ``STREAMPROC_BENCH_KCL_MESSAGE_RECORDS`` changes
it). Message size hardly matters (1,000 and 10,000 records per message measured within a few
percent of each other).

Timed: from the first ``processRecords`` written to the pipe to the status line that acknowledges
the last one. On the child's side that is the code a production child runs: amazon_kclpy's
``KCLProcess`` reading the pipe (one text line; ``processRecords`` parsed by
``connectors.kcl_protocol`` with orjson, base64), our ``ShardWorker`` and
``KclSource``/``KclShardReader``, and a real ``Runtime`` (decode, the seed rules of
``benchmarks/rulesets/seed.py``, routing, settling, Prometheus metrics, a restore point and an
inventory snapshot at each checkpoint, checkpoints through the daemon every
``runtime.checkpoint_interval_s``). Settings are the configuration's defaults (``build_parts``), so
backpressure limits are those a real child uses.

What is *not* production: I/O to AWS. The alerts go to the in-memory sink of the unit tests
(``tests/unit/memory.py``: it acknowledges every alert at the first flush), restore points and
inventory snapshots stay in memory, so the figure is protocol + decode + rules + runtime, without
sink, DynamoDB or network latency. And the child runs in a thread of this process on real
``os.pipe`` file descriptors, not as ``python -m connectors.kcl``: that entry builds its sinks,
checkpoint table and rule-state table from the configuration as AWS clients only (the seed
rules have a window and an inventory rule, so both tables are written), which would put moto's
speed into the figure. The daemon's side of the pipe costs this process little: while the child
works it is blocked in ``write``/``readline`` with the GIL released, and it parses only the few
short lines the child writes per message. The ``_Guard`` of the real entry (exit on an
unexpected error) is left out; a swallowed error fails the benchmark instead (amazon_kclpy
writes it to its error file, which is checked after every message).

Every round is checked against an in-process ``ShardProcessor`` over the same records: same
alert ids, every record read, none undecided, and the last record checkpointed through the
daemon after ``shutdownRequested``. The message size and its average bytes are in the row's note.

Not visible here: with the real sinks, ``ShardWorker`` holds each ``processRecords`` call up to
0.1 s while alerts are pending, and a sink's partial batch waits ``sinks.linger_ms`` (50 ms):
about 50 ms per message that produced alerts, whatever the CPU cost.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.summary import report
from connectors.kcl_protocol import kcl_process
from connectors.kcl_worker import KclShardReader, KclSource, ShardWorker
from streamproc.app import Parts, build_parts
from streamproc.config import Config, DeadLetterConfig, KclConfig, RulesConfig
from streamproc.metrics import Metrics
from streamproc.processor import DecodeLimits, ShardProcessor
from streamproc.records import Position, Record
from streamproc.runtime import Runtime
from streamproc.stateful import StateItem
from tests.unit.memory import MemoryCheckpointStore, MemorySink

# A round over a million records takes about a minute: more than the suite's default.
pytestmark = pytest.mark.timeout(1800)
ROOT = Path(__file__).resolve().parents[1]
SEED_RULES = ROOT / "benchmarks" / "rulesets" / "seed.py"
STREAM = "transactions"
SINK = "memory"
ROUNDS = 1  # a round reads the whole data set: 1,000,000 records take 25-50 s here


def message_records() -> int:
    """Records per ``processRecords`` message: ``kcl.max_records`` unless overridden."""
    text = os.environ.get("STREAMPROC_BENCH_KCL_MESSAGE_RECORDS", str(KclConfig().max_records))
    try:
        count = int(text.replace("_", ""))
    except ValueError:
        count = 0
    if not 1 <= count <= 10_000:
        raise SystemExit(f"STREAMPROC_BENCH_KCL_MESSAGE_RECORDS must be 1..10000, not {text!r}")
    return count


# ------------------------------------------------------------------------- the recording


@dataclass(frozen=True)
class Recording:
    """What the daemon writes for one shard: one ``processRecords`` line per message."""

    messages: list[bytes]
    records: int
    last_sequence: str

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.messages)) / len(self.messages)


def record_messages(records: list[Record], per_message: int) -> Recording:
    """The data set as ``processRecords`` lines, the daemon's JSON for each record."""
    last_arrival = records[-1].arrival_ms
    messages = []
    for start in range(0, len(records), per_message):
        batch = records[start : start + per_message]
        items = []
        for record in batch:
            items.append(
                {
                    "data": b64encode(record.data).decode("ascii"),
                    # The card, as the demo producer sets it (the data set leaves it empty).
                    "partitionKey": record.partition_key or orjson.loads(record.data)["card_id"],
                    # 56 digits, like Kinesis's (benchmarks/dataset.py)
                    "sequenceNumber": record.sequence_number,
                    "approximateArrivalTimestamp": record.arrival_ms,
                    "subSequenceNumber": record.sub_sequence_number,
                    "action": "record",
                }
            )
        message = {
            "action": "processRecords",
            "records": items,
            "millisBehindLatest": last_arrival - batch[-1].arrival_ms,
        }
        messages.append(orjson.dumps(message) + b"\n")
    return Recording(messages, len(records), records[-1].sequence_number)


def message_line(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


# ------------------------------------------------------------------------- the daemon's side


class PipeDaemon:
    """The MultiLangDaemon's side of one shard's child, over a pair of ``os.pipe``.

    The child (amazon_kclpy's ``KCLProcess`` around ``worker``) runs in a thread on the other
    ends. :meth:`send` writes one message and answers every checkpoint request until the child
    reports the status for that message, as the daemon does.
    """

    def __init__(self, worker: ShardWorker) -> None:
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()
        self._replies = os.fdopen(self._from_child, "rb")
        self.errors = io.StringIO()  # amazon_kclpy writes a processor's exception here
        self.checkpoints: list[tuple[str | None, int | None]] = []
        child_input = os.fdopen(child_in, "r", encoding="utf-8")
        # As connectors.kcl.main sets up the protocol channel: text, line-buffered.
        child_output = os.fdopen(child_out, "w", buffering=1, encoding="utf-8")
        process = kcl_process(
            worker, input_file=child_input, output_file=child_output, error_file=self.errors
        )

        def run_child() -> None:
            try:
                process.run()
            finally:  # a dead child closes its pipes, so the daemon's side fails, not hangs
                child_output.close()
                child_input.close()

        self._thread = threading.Thread(target=run_child, name="kcl-child", daemon=True)
        self._thread.start()

    def send(self, line: bytes, action: str) -> None:
        _write_all(self._to_child, line)
        while True:
            reply = self._replies.readline()
            if not reply:
                raise AssertionError(f"the child closed its output during {action}")
            if reply == b"\n":
                continue  # amazon_kclpy frames each message with blank lines
            message = orjson.loads(reply)
            if message["action"] == "status":
                if message["responseFor"] != action or self.errors.tell():
                    raise AssertionError(
                        f"{action}: status {message}; child errors: {self.errors.getvalue()}"
                    )
                return
            if message["action"] != "checkpoint":
                raise AssertionError(f"unexpected message from the child: {message}")
            seq, sub = message["sequenceNumber"], message["subSequenceNumber"]
            self.checkpoints.append((seq, sub))
            answer = {
                "action": "checkpoint",
                "sequenceNumber": seq,
                "subSequenceNumber": sub,
                "error": None,
            }
            _write_all(self._to_child, message_line(answer))

    def close(self) -> None:
        """Close the child's stdin, as the daemon does after a shutdown: the child exits."""
        os.close(self._to_child)
        self._thread.join(timeout=30)
        self._replies.close()
        if self._thread.is_alive():
            raise AssertionError("the child did not exit after its input closed")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ------------------------------------------------------------------------- the child's side


@dataclass
class MemoryStateStore:
    """Inventory snapshots, where a real child writes them to ``source.state_table``."""

    saves: list[list[StateItem]] = field(default_factory=list)

    def load(self, shard_id: str) -> list[StateItem]:
        return []  # a fresh shard: nothing stored yet

    def save(self, shard_id: str, items: list[StateItem]) -> None:
        self.saves.append(items)


@dataclass
class Child:
    """One shard's child: the worker, what it built, and the daemon talking to it."""

    sink: MemorySink
    worker: ShardWorker
    daemon: PipeDaemon
    runtimes: list[Runtime]


def settings(tmp_path: Path) -> tuple[Config, Parts]:
    config = Config(
        rules=RulesConfig(paths=(str(SEED_RULES),)),
        dead_letter=DeadLetterConfig(path=str(tmp_path / "dead-letters.jsonl")),
    )
    return config, build_parts(config)


def processor(config: Config, parts: Parts, shard_id: str) -> ShardProcessor:
    """What ``parts.processor_factory`` builds, with the memory sink as the default sink."""
    return ShardProcessor(
        parts.ruleset,
        identity_field=config.rules.identity_field,
        event_time_field=config.rules.event_time_field,
        limits=DecodeLimits(
            max_record_bytes=config.limits.max_record_bytes,
            max_nesting_depth=config.limits.max_nesting_depth,
        ),
        default_sinks=(SINK,),
        shard_id=shard_id,
        max_event_time_skew_ms=int(config.rules.max_event_time_skew_s * 1000),
    )


def start_child(tmp_path: Path, shard_id: str) -> Child:
    """A worker wired as :func:`connectors.kcl.build_worker` wires it, minus AWS; initialized."""
    config, parts = settings(tmp_path)
    grace_s = config.kcl.shutdown_grace_ms / 1000
    drain_s = min(config.runtime.drain_timeout_s, max(1.0, grace_s - 3.0))
    runtime_settings = dataclasses.replace(parts.settings, drain_timeout_s=drain_s)
    sink = MemorySink(name=SINK)
    store = MemoryCheckpointStore()
    rule_state = MemoryStateStore()
    runtimes: list[Runtime] = []

    def build(shard: str, checkpoint: Position | None) -> tuple[Runtime, KclSource, KclShardReader]:
        source = KclSource(STREAM, store, floor=checkpoint)
        reader = KclShardReader(shard)
        source.attach(reader)
        shard_processor = processor(config, parts, shard)
        runtime = Runtime(
            source,
            lambda _shard: shard_processor,
            {SINK: sink},
            parts.dead_letter,
            settings=runtime_settings,
            metrics=Metrics(),
            state_store=rule_state,
        )
        runtimes.append(runtime)
        return runtime, source, reader

    worker = ShardWorker(build, drain_timeout_s=drain_s)
    daemon = PipeDaemon(worker)
    initialize = {
        "action": "initialize",
        "shardId": shard_id,
        "sequenceNumber": "TRIM_HORIZON",
        "subSequenceNumber": 0,
    }
    daemon.send(message_line(initialize), "initialize")
    return Child(sink, worker, daemon, runtimes)


def stop_child(child: Child) -> None:
    """``shutdownRequested`` (drain, checkpoint what is settled), then end the child."""
    child.daemon.send(message_line({"action": "shutdownRequested"}), "shutdownRequested")
    child.daemon.close()
    child.worker.close()


# ------------------------------------------------------------------------- the benchmark


@pytest.fixture(scope="module")
def expected_alert_ids(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Record]]
) -> list[str]:
    """The alerts of the seed rules over the data set, from the processor alone (sorted ids)."""
    config, parts = settings(tmp_path_factory.mktemp("reference"))
    reference = processor(config, parts, batches[0][0].shard_id)
    ids = []
    for batch in batches:
        result = reference.process(batch)
        assert not result.dead_letters, result.dead_letters[:3]
        ids += [alert.alert_id for alert in result.alerts]
    assert ids, "the seed rules raise no alert on the data set: the check below would be empty"
    return sorted(ids)


def test_kcl_pipe_seed_rules(
    benchmark: Any, records: list[Record], expected_alert_ids: list[str], tmp_path: Path
) -> None:
    per_message = message_records()
    recording = record_messages(records, per_message)
    shard_id = records[0].shard_id
    finished: list[Child] = []

    def setup() -> tuple[tuple[Child], dict[str, Any]]:
        return (start_child(tmp_path / f"round-{len(finished)}", shard_id),), {}

    def replay(child: Child) -> None:
        send = child.daemon.send
        for line in recording.messages:
            send(line, "processRecords")

    def teardown(child: Child) -> None:
        stop_child(child)
        finished.append(child)

    benchmark.pedantic(replay, setup=setup, teardown=teardown, rounds=ROUNDS, iterations=1)

    assert len(finished) == ROUNDS
    for child in finished:
        (runtime,) = child.runtimes
        assert runtime.totals.records_read == recording.records
        assert runtime.totals.records_dead_lettered == 0
        assert runtime.totals.undecided_at_stop == 0
        assert sorted(child.sink.delivered) == expected_alert_ids
        assert child.daemon.checkpoints[-1] == (recording.last_sequence, 0)
    report(
        benchmark,
        "KCL child over a pipe: seed rules",
        recording.records,
        note=f"processRecords of {per_message:,} records, {recording.mean_bytes / 1024:,.0f} KiB"
        f"; in-process child thread, memory sink; {len(expected_alert_ids):,} alerts",
    )
