"""The KCL MultiLangDaemon as a source: our runtime inside the daemon's per-shard child process.

The daemon (Java, started by ``streamproc kcl``) owns leases, reading, shard order after a
reshard and the lease table's checkpoints. For every shard lease it holds it starts one child,
``python -m connectors.kcl --config FILE``, and talks to it over stdin/stdout through
``amazon_kclpy`` (v3 protocol). This module is that child.

Each child runs the same :class:`~streamproc.runtime.Runtime` as ``streamproc run``, over one
shard, with :class:`KclSource` as its source:

- ``process_records`` hands the batch to the runtime (decode, rules, sinks) and returns once the
  runtime has taken it and is not held back: while sinks are behind, the call blocks, so the
  daemon stops fetching for this shard (backpressure). The runtime checkpoints through the
  daemon's checkpointer only up to the last record whose alerts are all acknowledged, at the
  exact sequence and sub-sequence number (KPL sub-records arrive de-aggregated).
- ``shard_ended`` drains the shard and checkpoints its end, so the daemon may start the children.
- ``shutdown_requested`` (SIGTERM to the daemon) drains the sinks and checkpoints what is settled.
- ``lease_lost``: another worker owns the shard now; its state is dropped, nothing checkpointed.
- Checkpoint errors: ``ThrottlingException`` and ``InvalidStateException`` are retried on a
  later turn; ``ShutdownException`` (the lease is gone) stops the shard.

Window state moves with the lease: after each daemon checkpoint, the runtime's restore point
(where to replay from to rebuild window state) is saved to ``source.checkpoint_table``. A child
that starts on a shard with a daemon checkpoint reads the records from that restore point up to
the checkpoint again with GetRecords, feeding them to the windows only (no alerts), so a shard
picked up by another worker continues with the same window contents.

stdout is the daemon's protocol channel: nothing but amazon_kclpy may write to it. Logs go to
stderr (the daemon relays each line, at its ERROR level); the default level is WARNING.
An unexpected error exits the child (and with it the daemon), so nothing is checkpointed past a
batch that was not fully handled; the task restarts and reads it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import orjson
from botocore.config import Config as BotoConfig

from connectors.kinesis import KinesisShardReader, PollSettings
from streamproc.errors import StreamprocError, TransportError
from streamproc.interfaces import CheckpointStore, RestorePoint, ShardReader
from streamproc.records import Position, Record, RecordBatch

log = logging.getLogger("streamproc.kcl")

# Checkpoint errors the daemon reports by the Java exception's simple name.
_RETRY_LATER = frozenset({"ThrottlingException", "InvalidStateException"})
_LEASE_GONE = frozenset({"ShutdownException"})


class KclShardReader:
    """A :class:`~streamproc.interfaces.ShardReader` fed by the daemon's ``processRecords``.

    When window state must be rebuilt, it first returns the records from the restore point up to
    the daemon's checkpoint (``restore_until``), read again with GetRecords through ``replay``;
    then the batches pushed by the daemon, in order. ``finished`` turns true once the empty batch
    pushed by ``push_end`` (the daemon's ``shardEnded``) has been returned.
    """

    def __init__(
        self,
        shard_id: str,
        *,
        replay: ShardReader | None = None,
        restore_until: Position | None = None,
        restore_closed_through: Mapping[str, int] | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.restore_until = restore_until if replay is not None else None
        self.restore_closed_through: Mapping[str, int] = dict(restore_closed_through or {})
        self._replay = replay
        self._pending: deque[RecordBatch] = deque()
        self._end_queued = False
        self._finished = False
        self.replayed = 0

    @property
    def replaying(self) -> bool:
        return self._replay is not None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def queued(self) -> int:
        """Pushed batches the runtime has not taken yet."""
        return len(self._pending)

    def push(self, batch: RecordBatch) -> None:
        self._pending.append(batch)

    def push_end(self) -> None:
        if not self._end_queued:
            self._end_queued = True
            self._pending.append(RecordBatch(self.shard_id, []))

    def next_batch(self) -> RecordBatch | None:
        if self._replay is not None:
            return self._next_replayed(self._replay)
        if not self._pending:
            return None
        batch = self._pending.popleft()
        if not self._pending and self._end_queued:
            self._finished = True
        return batch

    def close(self) -> None:
        if self._replay is not None:
            self._replay.close()
            self._replay = None

    def _next_replayed(self, replay: ShardReader) -> RecordBatch | None:
        until = self.restore_until
        assert until is not None
        batch = replay.next_batch()
        if batch is None:
            if replay.finished:
                self._replay_done("the shard ended before the checkpoint was reached")
            return None
        records = [r for r in batch.records if r.position <= until]
        self.replayed += len(records)
        if records and records[-1].position == until:
            self._replay_done(None)
        elif len(records) < len(batch.records):
            self._replay_done("records after the checkpoint came before the checkpoint itself")
        elif replay.finished or (not batch.records and not batch.millis_behind_latest):
            self._replay_done("the replay caught up without reaching the checkpoint")
        return RecordBatch(self.shard_id, records, batch.millis_behind_latest)

    def _replay_done(self, problem: str | None) -> None:
        if problem is not None:
            # Records between the restore point and the checkpoint are missing (trimmed by the
            # stream's retention?): windows continue with what could be rebuilt.
            log.warning(
                "shard %s: window state rebuilt only partly (%d records): %s",
                self.shard_id,
                self.replayed,
                problem,
            )
            self.restore_until = None
        else:
            log.info("shard %s: window state rebuilt from %d records", self.shard_id, self.replayed)
        self.close()


class KclSource:
    """A :class:`~streamproc.interfaces.Source` over the one shard the daemon gave this child.

    ``checkpointer`` is the daemon's, valid only while a daemon call is being handled (the
    runtime is driven only from inside those calls). Restore points go to ``store`` after the
    daemon accepted the checkpoint: a stored restore point is then never ahead of the daemon's
    checkpoint, and an older one is safe (it only replays more).
    """

    def __init__(
        self, stream: str, store: CheckpointStore | None, floor: Position | None = None
    ) -> None:
        self.stream = stream
        self.store = store
        # The daemon's checkpoint when the shard was handed to us: records up to it are only
        # replayed (window state), and checkpointing them again is pointless (and lower than
        # the daemon's checkpoint, which it refuses).
        self.floor = floor
        self.checkpointer: Any = None
        self.lost = False  # the lease is gone: never checkpoint again
        self.ended = False  # the shard's end is checkpointed
        self.checkpointed: Position | None = None
        self._new: list[ShardReader] = []

    def attach(self, reader: ShardReader) -> None:
        self._new.append(reader)

    @property
    def unassigned(self) -> bool:
        return bool(self._new)

    def poll_assignments(self) -> list[ShardReader]:
        new, self._new = self._new, []
        return new

    def checkpoint(
        self,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> None:
        if self.lost:
            return
        if not shard_ended and (
            position is None or (self.floor is not None and position <= self.floor)
        ):
            return
        checkpointer = self.checkpointer
        if checkpointer is None:  # pragma: no cover - the runtime only runs inside daemon calls
            raise TransportError("no daemon call in progress to checkpoint through", retryable=True)
        from amazon_kclpy.checkpoint_error import CheckpointError

        try:
            if shard_ended:
                checkpointer.checkpoint()  # at the shard's end: SHARD_END
            elif position is not None:
                checkpointer.checkpoint(position.sequence, position.sub_sequence_number)
        except CheckpointError as exc:
            code = str(exc.value)
            if code in _LEASE_GONE:
                log.warning("shard %s: lease lost while checkpointing (%s)", shard_id, code)
                self.lost = True
                return
            # Throttling and invalid state pass; anything else the daemon may add is retried too
            # (a refused checkpoint only means the next one covers more).
            if code not in _RETRY_LATER:
                log.warning("shard %s: unexpected checkpoint error %s", shard_id, code)
            raise TransportError(
                f"daemon refused the checkpoint of {shard_id} at {position}: {code}",
                retryable=True,
            ) from None
        if shard_ended:
            self.ended = True
        elif position is not None:
            self.checkpointed = position
        if self.store is not None and restore is not None and position is not None:
            self.store.save(self.stream, shard_id, position, restore=restore)

    def close(self) -> None:
        for reader in self._new:
            reader.close()
        self._new = []


class Trace:
    """Optional record of what this child processed (``STREAMPROC_KCL_TRACE=DIR``): one JSON line
    per batch with the worker, shard, wall time and each record's position. For tests and for
    debugging hand-offs (which records did two workers both process?)."""

    def __init__(self, directory: str | None, worker: str) -> None:
        self._file: TextIO | None = None
        self.worker = worker
        if directory:
            os.makedirs(directory, exist_ok=True)
            name = f"{worker}-{os.getpid()}.jsonl"
            self._file = open(os.path.join(directory, name), "a", encoding="utf-8")  # noqa: SIM115

    def write(
        self,
        event: str,
        shard_id: str,
        records: list[Record] | None = None,
        *,
        count: int | None = None,
    ) -> None:
        if self._file is None:
            return
        line: dict[str, Any] = {
            "event": event,
            "worker": self.worker,
            "shard": shard_id,
            "pid": os.getpid(),
            "t": time.time(),
        }
        if count is not None:
            line["count"] = count
        if records is not None:
            line["records"] = [
                [r.sequence_number, r.sub_sequence_number, r.partition_key] for r in records
            ]
        self._file.write(orjson.dumps(line).decode() + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class ShardWorker:
    """The amazon_kclpy v3 record processor: one shard, one runtime.

    ``build(shard_id, checkpoint)`` creates the runtime, the source and the reader for the shard
    (see :func:`build_worker`); ``checkpoint`` is the daemon's (``None`` for TRIM_HORIZON/LATEST).
    """

    version = 3  # amazon_kclpy dispatches on this (v3: lease_lost/shard_ended/shutdown_requested)

    def __init__(
        self,
        build: Callable[[str, Position | None], tuple[Any, KclSource, KclShardReader]],
        *,
        trace: Trace | None = None,
        linger_s: float = 0.1,
        drain_timeout_s: float = 30.0,
        idle_sleep_s: float = 0.005,
    ) -> None:
        self._build = build
        self._trace = trace or Trace(None, "-")
        self._linger_s = linger_s
        self._drain_timeout_s = drain_timeout_s
        self._idle_sleep_s = idle_sleep_s
        self.runtime: Any = None
        self.source: KclSource | None = None
        self.reader: KclShardReader | None = None
        self.shard_id = "-"
        self.done = False
        self.empty_calls = 0  # processRecords without records (quiet shard): idle closes run

    # ---------------------------------------------------------------- daemon calls

    def initialize(self, initialize_input: Any) -> None:
        self.shard_id = str(initialize_input.shard_id)
        checkpoint = _daemon_position(
            initialize_input.sequence_number, initialize_input.sub_sequence_number
        )
        self.runtime, self.source, self.reader = self._build(self.shard_id, checkpoint)
        self._trace.write("initialize", self.shard_id)
        log.info("shard %s: start after %s", self.shard_id, checkpoint or "no checkpoint")
        reported = time.monotonic()
        replaying = self.reader.replaying
        while self.reader.replaying or self.source.unassigned:
            if not self.runtime.run_once():
                time.sleep(self._idle_sleep_s)
            if time.monotonic() - reported > 10:
                log.warning(
                    "shard %s: still rebuilding window state (%d records so far)",
                    self.shard_id,
                    self.reader.replayed,
                )
                reported = time.monotonic()
        if replaying:
            self._trace.write("restored", self.shard_id, count=self.reader.replayed)

    def process_records(self, process_records_input: Any) -> None:
        source, reader = self._ready()
        if source is None or reader is None:
            return
        source.checkpointer = process_records_input.checkpointer
        records = [
            Record(
                data=r.binary_data,
                partition_key=r.partition_key,
                sequence_number=r.sequence_number,
                sub_sequence_number=int(r.sub_sequence_number or 0),
                arrival_ms=int(r.timestamp_millis),
                shard_id=self.shard_id,
            )
            for r in process_records_input.records
        ]
        if records:
            self._trace.write("records", self.shard_id, records)
        else:
            self.empty_calls += 1
        reader.push(RecordBatch(self.shard_id, records, process_records_input.millis_behind_latest))
        self._pump(reader)

    def shard_ended(self, shard_ended_input: Any) -> None:
        source, reader = self._ready()
        if source is None or reader is None:
            return
        source.checkpointer = shard_ended_input.checkpointer
        reader.push_end()
        deadline = time.monotonic() + self._drain_timeout_s
        while not source.ended and not source.lost:
            if not self.runtime.run_once():
                if time.monotonic() >= deadline:
                    # Not checkpointed: the daemon calls shard_ended again later, and the
                    # children wait until this shard's alerts are delivered.
                    log.error(
                        "shard %s ended, but %d alert deliveries are still undecided after "
                        "%.0f s; its end is not checkpointed yet",
                        self.shard_id,
                        self.runtime.pending_deliveries,
                        self._drain_timeout_s,
                    )
                    return
                time.sleep(self._idle_sleep_s)
        self._trace.write("shard_ended", self.shard_id)
        log.info("shard %s: read to its end and checkpointed", self.shard_id)
        self.done = True

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        source, _ = self._ready()
        if source is None:
            return
        source.checkpointer = shutdown_requested_input.checkpointer
        self.runtime.stop()
        self.runtime.drain()
        totals = self.runtime.totals
        self._trace.write("shutdown_requested", self.shard_id, count=self.empty_calls)
        log.warning(
            "shard %s: shutdown requested: checkpointed at %s (%d records read, %s undecided)",
            self.shard_id,
            source.checkpointed,
            totals.records_read,
            totals.undecided_at_stop,
        )
        self.done = True

    def lease_lost(self, lease_lost_input: Any) -> None:
        del lease_lost_input
        if self.source is not None:
            self.source.lost = True
        if self.runtime is not None:
            self.runtime.stop()
        self._trace.write("lease_lost", self.shard_id)
        log.warning("shard %s: lease lost; its uncheckpointed work is dropped", self.shard_id)
        self.done = True

    # ---------------------------------------------------------------- internals

    def _ready(self) -> tuple[KclSource | None, KclShardReader | None]:
        if self.done or self.source is None or self.source.lost:
            return None, None
        return self.source, self.reader

    def _pump(self, reader: KclShardReader) -> None:
        """Run the loop until the runtime took the pushed batch and is not held back, then a
        little longer (``linger_s``) while deliveries make progress."""
        runtime = self.runtime
        source = self.source
        assert source is not None
        while reader.queued or runtime.backpressured():
            if source.lost:
                return
            if not runtime.run_once():
                time.sleep(self._idle_sleep_s)
        until = time.monotonic() + self._linger_s
        while runtime.pending_deliveries and time.monotonic() < until and not source.lost:
            if not runtime.run_once():
                time.sleep(self._idle_sleep_s)
        runtime.run_once()  # settle and checkpoint what the last flush decided


def _daemon_position(sequence_number: Any, sub_sequence_number: Any) -> Position | None:
    """The daemon's checkpoint: a real position, or None for TRIM_HORIZON, LATEST, ... ."""
    if sequence_number is None or not str(sequence_number).isdigit():
        return None
    return Position.of(str(sequence_number), int(sub_sequence_number or 0))


def build_worker(config_path: str | None) -> ShardWorker:
    """A ShardWorker wired from the streamproc configuration (the child's ``--config``)."""
    from streamproc.app import build_parts, checkpoint_store
    from streamproc.config import load_config
    from streamproc.metrics import Metrics
    from streamproc.runtime import Runtime

    config = load_config(config_path)
    parts = build_parts(config)
    # A shutdown must finish within the daemon's grace period, or the daemon moves on without
    # our final checkpoint: drain for at most the grace period less a margin.
    grace_s = config.kcl.shutdown_grace_ms / 1000
    drain_s = min(config.runtime.drain_timeout_s, max(1.0, grace_s - 3.0))
    parts.settings = dataclasses.replace(parts.settings, drain_timeout_s=drain_s)
    store = checkpoint_store(config, parts)
    stream = config.source.stream

    def build(shard_id: str, checkpoint: Position | None) -> tuple[Any, KclSource, KclShardReader]:
        source = KclSource(stream, store, floor=checkpoint)
        processor = parts.processor_factory(shard_id)
        replay: ShardReader | None = None
        closed_through: Mapping[str, int] = {}
        if processor.has_windows and checkpoint is not None:
            stored = store.load(stream, shard_id)
            restore = stored.restore if stored is not None else None
            if (
                restore is not None
                and restore.replay_from is not None
                and restore.replay_from <= checkpoint
            ):
                start = restore.replay_from
                replay = KinesisShardReader(
                    parts.client(
                        "kinesis",
                        config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 1}),
                    ),
                    stream=stream,
                    shard_id=shard_id,
                    resume_after=Position(start.sequence_number, start.sub_sequence_number - 1),
                    # The daemon does not read this shard while we rebuild: use the whole
                    # GetRecords budget (5 calls/s of up to 10,000 records).
                    settings=PollSettings(max_records_per_call=10_000, min_call_interval=0.2),
                )
                closed_through = restore.closed_through
                log.info(
                    "shard %s: rebuilding window state from %s to %s",
                    shard_id,
                    start,
                    checkpoint,
                )
        reader = KclShardReader(
            shard_id,
            replay=replay,
            restore_until=checkpoint,
            restore_closed_through=closed_through,
        )
        source.attach(reader)
        runtime = Runtime(
            source,
            lambda _shard: processor,
            parts.sinks,
            parts.dead_letter,
            settings=parts.settings,
            metrics=Metrics(),
        )
        return runtime, source, reader

    worker = os.environ.get("STREAMPROC_KCL_WORKER") or f"{socket.gethostname()}-{os.getppid()}"
    return ShardWorker(
        build,
        trace=Trace(os.environ.get("STREAMPROC_KCL_TRACE"), worker),
        drain_timeout_s=drain_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.kcl",
        description="The per-shard child process the KCL MultiLangDaemon starts "
        "(streamproc kcl writes it into the daemon's properties). Speaks the daemon's protocol "
        "on stdin/stdout; not meant to be run by hand.",
    )
    parser.add_argument("--config", help="streamproc TOML configuration")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("STREAMPROC_LOG_LEVEL", "WARNING").upper(),
        format="%(levelname)s %(name)s [pid %(process)d] %(message)s",
    )
    from amazon_kclpy import kcl

    # The real stdout is the daemon's protocol channel. Anything else that prints (a rule module
    # calling print, at import or per record; a library) goes to stderr instead of corrupting it.
    protocol = sys.stdout
    sys.stdout = sys.stderr
    try:
        worker = build_worker(args.config)
    except StreamprocError as exc:
        print(f"streamproc kcl child: {exc}", file=sys.stderr)
        return 2
    process = kcl.KCLProcess(_Guard(worker), input_file=sys.stdin, output_file=protocol)
    try:
        process.run()
    finally:
        if worker.runtime is not None:
            worker.runtime.close()
        worker._trace.close()
    return 0


class _Guard:
    """Wraps the worker so an unexpected error ends the process instead of being swallowed.

    amazon_kclpy logs an exception raised by a record processor and still reports the call as
    done: the batch would count as processed. Exiting makes the daemon stop instead, and the
    records after the last checkpoint are read again by the next worker.
    """

    version = 3

    def __init__(self, worker: ShardWorker) -> None:
        self._worker = worker

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._worker, name)

        def guarded(arg: Any) -> Any:
            try:
                return method(arg)
            except Exception:
                log.critical(
                    "shard %s: %s failed; exiting so the batch is read again",
                    self._worker.shard_id,
                    name,
                    exc_info=True,
                )
                sys.stderr.flush()
                os._exit(1)

        return guarded


if __name__ == "__main__":
    sys.exit(main())
