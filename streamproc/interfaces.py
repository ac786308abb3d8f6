"""The pluggable parts of streamproc, as small typed protocols.

The runtime loop (``streamproc.runtime``) owns all I/O and drives these. Implementations live in
``connectors/``; each protocol has a contract test suite that every implementation must pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from streamproc.records import Alert, DeadLetter, Position, RecordBatch
from streamproc.stateful import StateItem

# --------------------------------------------------------------------------------------------
# Sinks


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert handed to one sink. ``delivery_id`` is the runtime's handle to track the ack."""

    delivery_id: int
    alert: Alert


OutcomeStatus = Literal["sent", "duplicate", "parked"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one delivery. Every delivery gets exactly one outcome, eventually.

    - ``sent``: the service acknowledged it.
    - ``duplicate``: the service already had it (e.g. DynamoDB conditional put failed because the
      alert id exists): as good as sent.
    - ``parked``: permanently refused; written to the dead-letter destination with ``reason``.
    """

    delivery_id: int
    alert_id: str
    status: OutcomeStatus
    reason: str | None = None


class Sink(Protocol):
    """An alert destination.

    Contract:
    - ``add`` only buffers; it never does I/O and never blocks.
    - ``flush`` sends what is due, in batches no larger than the service limit, and returns the
      outcomes it has decided. Entries that failed with a retryable error stay buffered and are
      retried on a later ``flush`` (after backoff); ``flush`` does not sleep.
      Permanent failures (or retryable ones past the attempt limit) are parked in the sink's
      dead-letter destination before their outcome is returned.
      ``force=True`` sends partially filled batches too (shutdown, checkpoint time).
    - Nothing added is ever dropped: each delivery eventually gets exactly one outcome.
    - ``pending`` is the number of buffered deliveries without an outcome (for backpressure).
    """

    name: str

    def add(self, delivery: Delivery) -> None: ...

    def flush(self, *, force: bool = False) -> list[Outcome]: ...

    def pending(self) -> int: ...

    def close(self) -> None: ...


class DeadLetterDestination(Protocol):
    """Where refused records and alerts go, with the reason.

    ``park`` is synchronous and all-or-nothing from the caller's point of view: it returns only
    when every entry is stored, and raises ``TransportError`` otherwise (the caller keeps the
    entries and tries again; nothing is dropped).
    """

    def park(self, entries: Sequence[DeadLetter]) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Sources


class ShardReader(Protocol):
    """Reads one shard in order. Driven by the runtime loop, one call at a time.

    - ``next_batch`` makes at most one service call, never sleeps, and returns ``None`` when no
      call is due yet (rate limits, backoff after throttling). An empty batch means "read, nothing
      new". Transport errors that retrying can fix are handled inside (backoff, new iterator on
      expiry); anything else raises ``TransportError``.
    - ``finished`` becomes true once a closed shard has been read to its end; the runtime then
      checkpoints it as ended after every alert of it is acknowledged.
    """

    shard_id: str
    # Records at or before this position were processed (and their alerts delivered) by an
    # earlier run; they are read again only to rebuild window state. None: nothing to rebuild.
    restore_until: Position | None
    # Watermarks of idle/end closes to re-apply once the rebuild reaches restore_until.
    restore_closed_through: Mapping[str, int]
    # Optional (read with getattr): the shard's parent shards, whose snapshotted rule state
    # (inventory) the shard inherits after a reshard.

    def next_batch(self) -> RecordBatch | None: ...

    @property
    def finished(self) -> bool: ...

    def close(self) -> None: ...


class Source(Protocol):
    """A stream of shards.

    ``poll_assignments`` returns readers for shards that became readable since the last call
    (new shards, children whose parents are fully checkpointed). It may do I/O; the runtime calls
    it every few seconds. ``checkpoint`` records that everything up to ``position`` in a shard is
    done (every derived alert acknowledged); it never moves a checkpoint backwards.
    ``shard_ended=True`` marks the shard complete so its children can be read; ``position`` is
    ``None`` only for an ended shard that held no records.
    """

    def poll_assignments(self) -> list[ShardReader]: ...

    def checkpoint(
        self,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """What a restart needs to rebuild a shard's window state exactly as it was at a checkpoint.

    - ``replay_from``: the oldest record still contributing to window state (moved back to the
      record that last raised the watermark). A restart reads from there, feeding records up to
      the checkpoint to the windows only (no alerts, no dead letters), then carries on.
    - ``closed_through``: per window rule, the watermark its windows were closed through by an
      idle or end-of-shard close (wall-clock events that replaying records cannot reproduce);
      applied, silently, once the replay reaches the checkpoint.
    - ``closes``: how many such closes happened; it only grows, so a checkpoint at an unchanged
      position can still be updated after a close.
    """

    replay_from: Position | None
    closed_through: Mapping[str, int] = field(default_factory=dict)
    closes: int = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A stored checkpoint: the last position fully processed, or the shard's end, and (for
    shards with window rules) the :class:`RestorePoint` to rebuild window state from.

    ``pending_position``/``pending_restore``: a restore point saved *before* a checkpoint
    written elsewhere (the KCL daemon's lease table), for when the writer dies between that
    checkpoint and saving its restore point here (see :meth:`restore_for`)."""

    shard_id: str
    position: Position | None
    shard_ended: bool = False
    restore: RestorePoint | None = None
    pending_position: Position | None = None
    pending_restore: RestorePoint | None = None

    def restore_for(self, checkpoint: Position) -> RestorePoint | None:
        """The restore point that rebuilds window state at ``checkpoint`` (the daemon's):

        - the confirmed one saved at exactly that position;
        - else the pending one saved for exactly that position (its writer died after the
          daemon accepted the checkpoint, before confirming here);
        - else an older confirmed one (saved at ``position`` < ``checkpoint``; a pending one
          for another position was never accepted, or was overwritten). Its replay starts
          earlier than needed, which rebuilds the same windows; if no window held a record at
          ``position`` (no ``replay_from``), the replay starts right after ``position``. Idle
          closes since it was saved are not recorded and happen again;
        - else None (nothing stored before or at ``checkpoint``).
        """
        if self.restore is not None and self.position == checkpoint:
            return self.restore
        if self.pending_restore is not None and self.pending_position == checkpoint:
            return self.pending_restore
        older = self.restore
        if older is None or self.position is None or not self.position < checkpoint:
            return None
        if older.replay_from is None:  # the windows were empty at position: replay what follows
            after = Position(self.position.sequence_number, self.position.sub_sequence_number + 1)
            return RestorePoint(after, older.closed_through, older.closes)
        return older


class CheckpointStore(Protocol):
    """Durable per-shard checkpoints.

    ``save`` is conditional: it never moves a shard's checkpoint backwards (a stale writer's save
    is a no-op, not an error). ``load`` returns ``None`` for a shard never checkpointed.
    """

    def load(self, stream: str, shard_id: str) -> Checkpoint | None: ...

    def save(
        self,
        stream: str,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> None: ...

    def save_pending(
        self, stream: str, shard_id: str, position: Position, restore: RestorePoint
    ) -> None:
        """Store ``restore`` as the restore point of a checkpoint at ``position`` that is about
        to be written elsewhere; the stored checkpoint itself does not move. Never moves a
        pending position backwards."""
        ...


class StateStore(Protocol):
    """Snapshots of rule state that replay cannot rebuild (``streamproc.stateful``), per shard
    of one stream. ``save`` is idempotent; ``load`` returns every item of the shard."""

    def load(self, shard_id: str) -> list[StateItem]: ...

    def save(self, shard_id: str, items: list[StateItem]) -> None: ...
