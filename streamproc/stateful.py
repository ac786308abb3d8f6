"""Rule kinds that keep state per shard and decide per batch: model scoring, inventory.

A condition rule looks at one record; a window rule aggregates per key and window. The kinds here
are declared in rule modules like the others (``model_rule(...)``, ``inventory_rule(...)``) and
plug into the shard processor through two small interfaces:

- :class:`StatefulRuleSpec`, the declaration: validated at load time (``streamproc rules
  check``), shared by every shard, builds one :class:`ShardState` per shard;
- :class:`ShardState`, the per-shard state: it sees every decoded record in order
  (``on_record``), including records replayed after a restart only to rebuild state
  (``restoring=True``: update state, decide nothing), and emits its alerts at the end of each
  batch (``end_batch``), which is where a model scores the whole batch in one call.

Like window state, their state is rebuilt after a restart or a lease move by replaying from
``oldest_position()``; it must therefore depend only on the records, in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamproc.records import Alert, DeadLetter, Pos, Position, Record, quick_init

#: ``on_record(doc, record, identity, restoring) -> reason or None``
RecordHandler = Callable[[Mapping[str, Any], Record, str | None, bool], str | None]


@quick_init  # snapshots make tens of thousands at a checkpoint
@dataclass(frozen=True, slots=True)
class StateItem:
    """One key's state in a snapshot: ``value`` (JSON-able) after every record of that key up to
    ``position`` of ``shard_id``, which the snapshot counts (a restart skips them)."""

    rule: str
    key: str
    value: Mapping[str, Any]
    shard_id: str
    position: Position


class ShardState(ABC):
    """One stateful rule's state on one shard.

    State that replay cannot rebuild (it depends on all history, like running stock) is
    snapshotted instead: ``snapshot(through)`` returns the items changed since the last
    ``commit``, as of the settled position ``through`` (the end of a processed batch; None: no
    record of the shard settled yet), plus any state inherited from parent shards not yet
    stored under this shard; the runtime stores them before it checkpoints ``through`` and then
    calls ``commit(through)``; a restarted shard ``load``s them.
    """

    def snapshot(self, through: Position | None) -> list[StateItem]:
        del through
        return []

    def commit(self, through: Position | None) -> None:
        del through

    def load(self, items: list[StateItem]) -> None:
        del items

    @abstractmethod
    def on_record(
        self,
        doc: Mapping[str, Any],
        record: Record,
        identity: str | None,
        restoring: bool,
    ) -> str | None:
        """Take one decoded record into account. Returns a reason if the record cannot be used
        by this rule (it is dead-lettered, unless restoring), else None.

        ``identity`` is the record's identity for alert ids, or None if nobody needed it yet:
        make it with :func:`streamproc.records.record_identity` (and the ``identity_field`` the
        spec's ``build`` was given) for an alert, not per record.

        A position kept in state is the plain (sequence number, sub-sequence number) tuple
        ``pos_of(record)``, not a Position, made only where it is kept or compared: the hot
        path makes none per record."""

    def record_handler(self) -> RecordHandler:
        """What the shard processor calls per record: :meth:`on_record`, or a function doing
        the same with less lookup per call. The processor keeps it; a state that keeps it too
        makes a cycle, and its memory then waits for a full collection once the shard is
        dropped."""
        return self.on_record

    @abstractmethod
    def end_batch(self, alerts: list[Alert], dead: list[DeadLetter]) -> None:
        """Decide the batch: append alerts (and dead letters for records it could not score)."""

    @abstractmethod
    def oldest_position(self) -> Pos | None:
        """The earliest record the state still depends on (None: none)."""

    @abstractmethod
    def key_count(self) -> int:
        """Keys holding state (for the window-keys gauge)."""


class StatefulRuleSpec(ABC):
    """A declared stateful rule. Subclasses are frozen dataclasses with at least these fields."""

    name: str
    version: int
    origin: str
    sinks: tuple[str, ...]
    description: str

    kind: str = "stateful"
    # True if its state is snapshotted (needs the state store), not rebuilt by replay.
    snapshots: bool = False

    @abstractmethod
    def build(
        self, shard_id: str, default_sinks: tuple[str, ...], identity_field: str
    ) -> ShardState:
        """A fresh state for one shard."""

    @abstractmethod
    def summary(self) -> str:
        """One line for ``streamproc rules list``."""
