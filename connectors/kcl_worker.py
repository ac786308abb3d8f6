"""The per-shard record processor the KCL MultiLangDaemon talks to (amazon_kclpy v3).

See :mod:`connectors.kcl` for the whole picture. Here:

- :class:`KclShardReader`: the shard's records as the runtime reads them: first a replay (to
  rebuild window state up to the daemon's checkpoint), then the batches the daemon pushes;
- :class:`KclSource`: checkpoints through the daemon's checkpointer, with the restore point
  stored before (pending) and after (confirmed); handles the daemon's checkpoint errors;
- :class:`ShardWorker`: the record processor: ``initialize``, ``process_records``,
  ``shard_ended``, ``shutdown_requested``, ``lease_lost``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from connectors.kcl_protocol import records_of
from streamproc.errors import TransportError
from streamproc.interfaces import CheckpointStore, RestorePoint, ShardReader
from streamproc.records import Position, Record, RecordBatch

if TYPE_CHECKING:
    from connectors.kcl_trace import Trace
    from streamproc.runtime import Runtime

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
        self.parents: tuple[str, ...] = ()  # set by the builder (inherited rule state)
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
        try:
            batch = replay.next_batch()
        except TransportError as exc:  # retryable errors are retried inside the reader
            self._replay_done(f"reading the stream failed: {exc}")
            return None
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
    runtime is driven only from inside those calls). A checkpoint with window state takes three
    writes: the restore point to ``store`` as *pending* for the position, the daemon's
    checkpoint, then the restore point as confirmed. Whichever write a crash interrupts, the
    next owner finds a restore point for the daemon's checkpoint
    (:meth:`~streamproc.interfaces.Checkpoint.restore_for`): the confirmed one, the pending one
    (a crash after the daemon's write), or an older confirmed one (a crash before it: the
    daemon's checkpoint did not move either).
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
            # Nothing new for the daemon. But windows closed (idle close) since the shard was
            # handed over must still be recorded, or the next owner reopens them.
            if self.store is not None and restore is not None and self.floor is not None:
                self.store.save(self.stream, shard_id, self.floor, restore=restore)
            return
        checkpointer = self.checkpointer
        if checkpointer is None:  # pragma: no cover - the runtime only runs inside daemon calls
            raise TransportError("no daemon call in progress to checkpoint through", retryable=True)
        from amazon_kclpy.checkpoint_error import CheckpointError

        if self.store is not None and restore is not None and position is not None:
            # First, so that a crash right after the daemon's write still leaves the next owner
            # a restore point for it.
            self.store.save_pending(self.stream, shard_id, position, restore)
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


class ShardWorker:
    """The amazon_kclpy v3 record processor: one shard, one runtime.

    ``build(shard_id, checkpoint)`` creates the runtime, the source and the reader for the shard
    (see :func:`connectors.kcl.build_worker`); ``checkpoint`` is the daemon's (``None`` for
    TRIM_HORIZON/LATEST).
    """

    version = 3  # amazon_kclpy dispatches on this (v3: lease_lost/shard_ended/shutdown_requested)

    def __init__(
        self,
        build: Callable[[str, Position | None], tuple[Runtime, KclSource, KclShardReader]],
        *,
        trace: Trace | None = None,
        linger_s: float = 0.1,
        drain_timeout_s: float = 30.0,
        idle_sleep_s: float = 0.005,
        report_every_s: float = 30.0,
    ) -> None:
        self._build = build
        self._trace = trace
        self._linger_s = linger_s
        self._drain_timeout_s = drain_timeout_s
        self._idle_sleep_s = idle_sleep_s
        self._report_every_s = report_every_s
        self.runtime: Runtime | None = None
        self.source: KclSource | None = None
        self.reader: KclShardReader | None = None
        self.shard_id = "-"
        self.done = False
        self.empty_calls = 0  # processRecords without records (quiet shard): idle closes run
        self._idle = False

    # ---------------------------------------------------------------- daemon calls

    def initialize(self, initialize_input: Any) -> None:
        self.shard_id = str(initialize_input.shard_id)
        checkpoint = _daemon_position(
            initialize_input.sequence_number, initialize_input.sub_sequence_number
        )
        runtime, source, reader = self._build(self.shard_id, checkpoint)
        self.runtime, self.source, self.reader = runtime, source, reader
        self._note("initialize")
        log.info("shard %s: start after %s", self.shard_id, checkpoint or "no checkpoint")
        reported = time.monotonic()
        replaying = reader.replaying
        while reader.replaying or source.unassigned:
            if not runtime.run_once():
                time.sleep(self._idle_sleep_s)
            if time.monotonic() - reported > self._report_every_s:
                log.warning(
                    "shard %s: still rebuilding window state (%d records so far)",
                    self.shard_id,
                    reader.replayed,
                )
                reported = time.monotonic()
        if replaying:
            self._note("restored", count=reader.replayed)

    def process_records(self, process_records_input: Any) -> None:
        runtime, source, reader = self._ready()
        if runtime is None or source is None or reader is None:
            return
        source.checkpointer = process_records_input.checkpointer
        records = records_of(process_records_input, self.shard_id)
        if records:
            self._note("records", records)
            self._idle = False
        else:
            self.empty_calls += 1
            if not self._idle:  # the first empty call since records: the shard went quiet
                self._note("idle")
                self._idle = True
        behind = process_records_input.millis_behind_latest
        reader.push(RecordBatch(self.shard_id, records, behind))
        # Behind the shard's tip the daemon has the next batch ready: hand this call back at
        # once rather than wait for deliveries here (they go on in the next call).
        self._pump(runtime, source, reader, 0.0 if behind else self._linger_s)

    def shard_ended(self, shard_ended_input: Any) -> None:
        """Deliver every alert of the shard, then checkpoint its end. This waits as long as the
        sinks need: the daemon calls shard_ended only once per child, and the children shards
        start only after this end is checkpointed."""
        runtime, source, reader = self._ready()
        if runtime is None or source is None or reader is None:
            return
        source.checkpointer = shard_ended_input.checkpointer
        reader.push_end()
        reported = time.monotonic()
        while not source.ended and not source.lost:
            if not runtime.run_once():
                time.sleep(self._idle_sleep_s)
            if time.monotonic() - reported > self._report_every_s:
                log.warning(
                    "shard %s ended; waiting for %d alert deliveries before checkpointing its "
                    "end (its children start after that)",
                    self.shard_id,
                    runtime.pending_deliveries,
                )
                reported = time.monotonic()
        if source.lost:
            log.warning("shard %s: lease lost before its end was checkpointed", self.shard_id)
        else:
            self._note("shard_ended")
            log.info("shard %s: read to its end and checkpointed", self.shard_id)
        self.done = True

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        runtime, source, _ = self._ready()
        if runtime is None or source is None:
            return
        source.checkpointer = shutdown_requested_input.checkpointer
        runtime.stop()
        runtime.drain()  # at most drain_timeout_s: within the daemon's shutdown grace period
        totals = runtime.totals
        self._note("shutdown_requested", count=self.empty_calls)
        log.info(
            "shard %s: shutdown requested: checkpointed at %s (%d records read, %d undecided)",
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
        self._note("lease_lost")
        log.info("shard %s: lease lost; its uncheckpointed work is dropped", self.shard_id)
        self.done = True

    def close(self) -> None:
        """After the daemon closed stdin: release clients and files."""
        if self.runtime is not None:
            self.runtime.close()
        if self._trace is not None:
            self._trace.close()

    # ---------------------------------------------------------------- internals

    def _note(
        self, event: str, records: list[Record] | None = None, count: int | None = None
    ) -> None:
        if self._trace is not None:
            self._trace.write(event, self.shard_id, records, count=count)

    def _ready(self) -> tuple[Runtime | None, KclSource | None, KclShardReader | None]:
        if self.done or self.source is None or self.source.lost:
            return None, None, None
        return self.runtime, self.source, self.reader

    def _pump(
        self, runtime: Runtime, source: KclSource, reader: KclShardReader, linger_s: float
    ) -> None:
        """Run the loop until the runtime took the pushed batch and is not held back, then a
        little longer (``linger_s``) while deliveries make progress."""
        while reader.queued or runtime.backpressured():
            if source.lost:
                return
            if not runtime.run_once():
                time.sleep(self._idle_sleep_s)
        until = time.monotonic() + linger_s
        while runtime.pending_deliveries and time.monotonic() < until and not source.lost:
            if not runtime.run_once():
                time.sleep(self._idle_sleep_s)
        runtime.run_once()  # settle and checkpoint what the last flush decided


def _daemon_position(sequence_number: Any, sub_sequence_number: Any) -> Position | None:
    """The daemon's checkpoint: a real position, or None for TRIM_HORIZON, LATEST, ... ."""
    if sequence_number is None or not str(sequence_number).isdigit():
        return None
    return Position.of(str(sequence_number), int(sub_sequence_number or 0))
