"""In-memory implementations of the source and sink protocols, for runtime unit tests.

They implement streamproc's own interfaces (not AWS clients): the runtime's logic is exercised
against them where emulators cannot produce the situation (a shard ending exactly when
processing fails, a dead-letter destination that is down for a precise number of calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from streamproc.errors import TransportError
from streamproc.interfaces import Checkpoint, Delivery, Outcome, RestorePoint
from streamproc.records import DeadLetter, Position, Record, RecordBatch


@dataclass
class MemoryReader:
    shard_id: str
    batches: list[list[Record]]
    closed: bool = True  # the shard ends after its batches (a parent after a split)
    restore_until: Position | None = None
    restore_closed_through: dict[str, int] = field(default_factory=dict)
    _finished: bool = False

    def next_batch(self) -> RecordBatch | None:
        if self._finished:
            return None
        if not self.batches:
            if self.closed:
                self._finished = True
            return RecordBatch(self.shard_id, [], 0)
        records = self.batches.pop(0)
        if not self.batches and self.closed:
            self._finished = True  # like Kinesis: the last page has no next iterator
        return RecordBatch(self.shard_id, records, 0)

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        pass


@dataclass
class MemorySource:
    readers: list[MemoryReader]
    checkpoints: dict[str, tuple[Position | None, bool]] = field(default_factory=dict)
    fail_checkpoints: TransportError | None = None
    handed_out: bool = False

    def poll_assignments(self) -> list[MemoryReader]:
        if self.handed_out:
            return []
        self.handed_out = True
        return list(self.readers)

    def checkpoint(
        self,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> None:
        if self.fail_checkpoints is not None:
            raise self.fail_checkpoints
        self.checkpoints[shard_id] = (position, shard_ended)

    def close(self) -> None:
        pass


@dataclass
class MemorySink:
    name: str = "memory"
    buffer: list[Delivery] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    raise_on_add: Exception | None = None
    accepting: bool = True

    def add(self, delivery: Delivery) -> None:
        if self.raise_on_add is not None:
            raise self.raise_on_add
        self.buffer.append(delivery)

    def flush(self, *, force: bool = False) -> list[Outcome]:
        if not self.accepting:
            return []
        out = [Outcome(d.delivery_id, d.alert.alert_id, "sent") for d in self.buffer]
        self.delivered += [d.alert.alert_id for d in self.buffer]
        self.buffer = []
        return out

    def pending(self) -> int:
        return len(self.buffer)

    def close(self) -> None:
        pass


@dataclass
class MemoryDeadLetter:
    parked: list[DeadLetter] = field(default_factory=list)
    failures_left: int = 0
    calls: int = 0

    def park(self, entries: Sequence[DeadLetter]) -> None:
        self.calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise TransportError("dead-letter queue unavailable (test)", retryable=True)
        self.parked.extend(entries)

    def close(self) -> None:
        pass


class MemoryCheckpointStore:
    """A CheckpointStore in memory: ``saves`` lists every (position, restore point) saved, in
    order, ``pending`` every pending one; ``load`` finds nothing (a shard's first owner)."""

    def __init__(self) -> None:
        self.saves: list[tuple[Position | None, RestorePoint | None]] = []
        self.pending: list[tuple[Position, RestorePoint]] = []

    def load(self, stream: str, shard_id: str) -> Checkpoint | None:
        return None

    def save(
        self,
        stream: str,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> None:
        self.saves.append((position, restore))

    def save_pending(
        self, stream: str, shard_id: str, position: Position, restore: RestorePoint
    ) -> None:
        self.pending.append((position, restore))
