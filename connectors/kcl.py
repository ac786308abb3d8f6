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

Window state moves with the lease: with each daemon checkpoint, the runtime's restore point
(where to replay from to rebuild window state) is saved to ``source.checkpoint_table`` (as
pending before the daemon's write, confirmed after it: see ``KclSource``). A child
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
from collections.abc import Mapping
from typing import Any

from botocore.config import Config as BotoConfig

from connectors.kcl_trace import Trace
from connectors.kcl_worker import KclShardReader, KclSource, ShardWorker
from connectors.kinesis import KinesisShardReader, PollSettings
from streamproc.errors import StreamprocError, TransportError
from streamproc.interfaces import Checkpoint, CheckpointStore, ShardReader
from streamproc.records import Position

log = logging.getLogger("streamproc.kcl")


def build_worker(config_path: str | None) -> ShardWorker:
    """A ShardWorker wired from the streamproc configuration (the child's ``--config``)."""
    from streamproc.app import build_parts, checkpoint_store, state_store
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
    rule_state = state_store(config, parts)
    stream = config.source.stream

    def build(
        shard_id: str, checkpoint: Position | None
    ) -> tuple[Runtime, KclSource, KclShardReader]:
        source = KclSource(stream, store, floor=checkpoint)
        processor = parts.processor_factory(shard_id)
        replay: ShardReader | None = None
        closed_through: Mapping[str, int] = {}
        if processor.has_windows and checkpoint is not None:
            stored = _load_with_retries(store, stream, shard_id)
            restore = stored.restore_for(checkpoint) if stored is not None else None
            start = restore.replay_from if restore is not None else None
            if restore is None:
                # No window state was ever stored for the shard's checkpoint (a first window
                # rule, a new checkpoint table). Replaying the whole shard could take hours:
                # windows start empty instead.
                log.warning(
                    "shard %s: no stored restore point for the daemon's checkpoint %s; window "
                    "state starts empty (window alerts of the next minutes may differ)",
                    shard_id,
                    checkpoint,
                )
            if start is not None and start <= checkpoint:
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
                closed_through = restore.closed_through if restore is not None else {}
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
        if rule_state is not None:  # inventory state: a child shard inherits its parents'
            reader.parents = _parents(parts.client("kinesis"), stream, shard_id)
        source.attach(reader)
        runtime = Runtime(
            source,
            lambda _shard: processor,
            parts.sinks,
            parts.dead_letter,
            settings=parts.settings,
            metrics=Metrics(),
            state_store=rule_state,
        )
        return runtime, source, reader

    worker = os.environ.get("STREAMPROC_KCL_WORKER") or f"{socket.gethostname()}-{os.getppid()}"
    return ShardWorker(
        build,
        trace=Trace(os.environ.get("STREAMPROC_KCL_TRACE"), worker),
        drain_timeout_s=drain_s,
    )


def _parents(client: Any, stream: str, shard_id: str) -> tuple[str, ...]:
    """The parent shards of ``shard_id`` (ListShards), so its rule state can be inherited."""
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = client.list_shards(**kwargs)
        for shard in page.get("Shards", []):
            if shard["ShardId"] == shard_id:
                found = (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
                return tuple(p for p in found if p)
        token = page.get("NextToken")
        if not token:
            return ()
        kwargs = {"NextToken": token}


def _load_with_retries(
    store: CheckpointStore, stream: str, shard_id: str, attempts: int = 8
) -> Checkpoint | None:
    """The stored restore point; retryable failures (throttling, a blip) are retried with
    backoff (~25 s in all) before the error ends the child."""
    for attempt in range(attempts):
        try:
            return store.load(stream, shard_id)
        except TransportError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            delay = min(5.0, 0.2 * 2**attempt)
            log.warning("shard %s: loading its restore point failed (%s); retrying", shard_id, exc)
            time.sleep(delay)
    return None  # pragma: no cover - the loop returns or raises


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
    from connectors.kcl_protocol import kcl_process

    # The real stdout is the daemon's protocol channel. Anything else that prints (a rule module
    # calling print, at import or per record; a library) goes to stderr instead of corrupting it.
    # At the file-descriptor level too: C extensions and subprocesses write to fd 1 directly.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        worker = build_worker(args.config)
    except StreamprocError as exc:
        print(f"streamproc kcl child: {exc}", file=sys.stderr)
        return 2
    process = kcl_process(_Guard(worker), input_file=sys.stdin, output_file=protocol)
    try:
        process.run()
    finally:
        worker.close()
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
