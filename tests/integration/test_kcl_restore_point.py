"""Restore points of the KCL child in the checkpoint table (DynamoDB on the moto server).

A checkpoint with window state is three writes: the restore point as *pending* for the position,
the daemon's checkpoint (the lease table), then the restore point as confirmed. These tests cut
the child off between them (a crash) and check that the next owner still finds the restore point
that rebuilds the windows at the daemon's checkpoint. The daemon's side is a recorder (the real
daemon is exercised in test_kcl.py, where a crash cannot be aimed at this moment); the cut is a
botocore event hook that fails the confirming UpdateItem as a dropped connection would.
"""

from __future__ import annotations

from typing import Any

import pytest
from amazon_kclpy.checkpoint_error import CheckpointError
from botocore.exceptions import EndpointConnectionError

from connectors.checkpoints import DynamoDbCheckpointStore, ensure_table
from connectors.kcl_worker import KclSource
from streamproc.errors import TransportError
from streamproc.interfaces import Checkpoint, RestorePoint
from streamproc.records import Position

SHARD = "shardId-000000000004"


class Daemon:
    """The daemon's checkpointer: records accepted checkpoints, or refuses with ``refuse``.
    ``pending_seen`` records, for each checkpoint asked, the pending position already stored."""

    def __init__(self, store: DynamoDbCheckpointStore) -> None:
        self.store = store
        self.accepted: list[Position] = []
        self.pending_seen: list[Position | None] = []
        self.refuse: str | None = None

    def checkpoint(self, sequence: str, sub_sequence: int) -> None:
        stored = self.store.load("orders", SHARD)
        self.pending_seen.append(None if stored is None else stored.pending_position)
        if self.refuse is not None:
            raise CheckpointError(self.refuse)
        self.accepted.append(Position.of(sequence, sub_sequence))


@pytest.fixture
def ddb(aws_client: Any) -> Any:
    return aws_client("dynamodb")


@pytest.fixture
def store(ddb: Any, unique_name: str) -> DynamoDbCheckpointStore:
    ensure_table(ddb, unique_name)
    return DynamoDbCheckpointStore(ddb, unique_name)


def cut_confirming_writes(ddb: Any) -> list[str]:
    """Fail every UpdateItem but the pending ones, as a lost connection would: the child dies
    after the daemon's checkpoint, before confirming the restore point. Returns what was cut."""
    cut: list[str] = []

    def fault(params: dict[str, Any], **_: Any) -> None:
        if not params["UpdateExpression"].startswith("SET pending_"):
            cut.append(params["UpdateExpression"])
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1 (cut by the test)")

    ddb.meta.events.register("before-parameter-build.dynamodb.UpdateItem", fault)
    return cut


def source(store: DynamoDbCheckpointStore, daemon: Daemon, floor: Position | None) -> KclSource:
    out = KclSource("orders", store, floor=floor)
    out.checkpointer = daemon
    return out


def test_a_crash_after_the_daemons_first_checkpoint_leaves_its_restore_point(
    ddb: Any, store: DynamoDbCheckpointStore
) -> None:
    """The shard's first checkpoint: before pending restore points, nothing was stored for it,
    and the next owner started with empty windows."""
    daemon = Daemon(store)
    first = RestorePoint(Position.of("3"), {"velocity": 1_000}, 1)
    cut = cut_confirming_writes(ddb)
    with pytest.raises(TransportError):
        source(store, daemon, None).checkpoint(SHARD, Position.of("10", 2), restore=first)
    assert daemon.accepted == [Position(10, 2)] and len(cut) == 1
    assert daemon.pending_seen == [Position(10, 2)]  # stored before the daemon's checkpoint

    stored = store.load("orders", SHARD)
    assert stored is not None and stored.position is None and stored.restore is None
    assert stored.restore_for(Position(10, 2)) == first


def test_a_crash_after_a_later_daemon_checkpoint_uses_the_pending_restore_point(
    ddb: Any, store: DynamoDbCheckpointStore
) -> None:
    daemon = Daemon(store)
    old = RestorePoint(Position.of("3"), {}, 0)
    new = RestorePoint(Position.of("12"), {"velocity": 9_000}, 2)
    source(store, daemon, None).checkpoint(SHARD, Position.of("10"), restore=old)
    cut_confirming_writes(ddb)
    with pytest.raises(TransportError):
        source(store, daemon, Position(10)).checkpoint(SHARD, Position.of("20"), restore=new)
    assert daemon.accepted == [Position(10), Position(20)]

    stored = store.load("orders", SHARD)
    assert stored is not None and stored.position == Position(10) and stored.restore == old
    assert stored.pending_position == Position(20) and stored.pending_restore == new
    assert stored.restore_for(Position(20)) == new


def test_a_checkpoint_the_daemon_refused_leaves_the_older_restore_point_in_force(
    store: DynamoDbCheckpointStore,
) -> None:
    """The pending restore point is stored, then the daemon refuses (here: the lease moved on).
    The daemon's checkpoint is the older one, and so is the restore point the next owner uses."""
    daemon = Daemon(store)
    old = RestorePoint(Position.of("3"), {}, 0)
    source(store, daemon, None).checkpoint(SHARD, Position.of("10"), restore=old)
    daemon.refuse = "ShutdownException"
    later = source(store, daemon, Position(10))
    later.checkpoint(SHARD, Position.of("20"), restore=RestorePoint(Position.of("15")))
    assert later.lost and daemon.accepted == [Position(10)]

    stored = store.load("orders", SHARD)
    assert stored is not None and stored.pending_position == Position(20)
    assert stored.restore_for(Position(10)) == old


def test_every_write_completing_stores_the_same_restore_point_twice(
    store: DynamoDbCheckpointStore,
) -> None:
    daemon = Daemon(store)
    point = RestorePoint(Position.of("7", 1), {"velocity": 5}, 3)
    source(store, daemon, None).checkpoint(SHARD, Position.of("9"), restore=point)
    assert store.load("orders", SHARD) == Checkpoint(
        SHARD, Position(9), restore=point, pending_position=Position(9), pending_restore=point
    )


def test_a_pending_restore_point_behind_the_checkpoint_or_after_the_end_is_refused(
    store: DynamoDbCheckpointStore,
) -> None:
    """A later pending point (a stale owner's, whose daemon checkpoint was refused) is replaced
    by the new owner's, which starts at the daemon's lower checkpoint; a point behind the
    confirmed checkpoint is refused, and an ended shard keeps its item as it was."""
    store.save("orders", SHARD, Position(20), restore=RestorePoint(Position(5)))
    store.save_pending("orders", SHARD, Position(40), RestorePoint(Position(30)))  # stale owner
    mine = RestorePoint(None, {"velocity": 4}, 1)
    store.save_pending("orders", SHARD, Position(25), mine)
    stored = store.load("orders", SHARD)
    assert stored is not None and stored.pending_position == Position(25)
    assert stored.pending_restore == mine  # no replay_from: no window holds a record

    store.save_pending("orders", SHARD, Position(15), RestorePoint(Position(11)))  # behind 20
    stored = store.load("orders", SHARD)
    assert stored is not None and stored.pending_position == Position(25)

    assert store.try_save("orders", SHARD, Position(40), shard_ended=True)
    store.save_pending("orders", SHARD, Position(50), RestorePoint(Position(45)))
    stored = store.load("orders", SHARD)
    assert stored is not None and stored.pending_position == Position(25)


def test_restore_for_picks_the_point_that_rebuilds_the_daemons_checkpoint() -> None:
    confirmed = RestorePoint(Position(5), {}, 0)
    pending = RestorePoint(Position(8), {"w": 1}, 1)
    both = Checkpoint(
        SHARD,
        Position(10),
        restore=confirmed,
        pending_position=Position(20),
        pending_restore=pending,
    )
    assert both.restore_for(Position(10)) == confirmed  # confirmed at the daemon's checkpoint
    assert both.restore_for(Position(20)) == pending  # confirming was cut off
    assert both.restore_for(Position(15)) == confirmed  # an older one: replays more, safely
    assert both.restore_for(Position(9)) is None  # stored ahead of the daemon: unusable
    same = Checkpoint(
        SHARD,
        Position(10),
        restore=confirmed,
        pending_position=Position(10),
        pending_restore=pending,
    )
    assert same.restore_for(Position(10)) == confirmed  # confirmed later (an idle close)
    assert Checkpoint(SHARD, None).restore_for(Position(1)) is None
    # An older point taken while no window held a record: replay everything after it.
    empty = Checkpoint(SHARD, Position(10, 2), restore=RestorePoint(None, {"w": 7}, 2))
    assert empty.restore_for(Position(30)) == RestorePoint(Position(10, 3), {"w": 7}, 2)
    assert empty.restore_for(Position(10, 2)) == RestorePoint(None, {"w": 7}, 2)
