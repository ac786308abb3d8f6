"""A tiny amazon_kclpy v3 record processor for smoke-testing the KCL MultiLangDaemon.

The daemon starts one of these per shard (properties `executableName`) and talks to it over
stdin/stdout, one JSON message per line: stdout belongs to that protocol, so everything this
file reports goes to stderr (the daemon copies a child's stderr into its own log) or to the
output file.

Each record becomes one JSON line appended to $SMOKE_OUT:
    {"shard": ..., "seq": ..., "subseq": ..., "pk": ..., "data": <utf-8 text>}
Every batch is checkpointed at its last record (unless SMOKE_BATCH_CHECKPOINT=0, which leaves
the lease table at TRIM_HORIZON until the final checkpoint: a clear test of it); shard_ended
and shutdown_requested checkpoint too (that final checkpoint is what a SIGTERM with
shutdownGraceMillis > 0 produces). Lifecycle events are appended as {"event": ...} lines to
$SMOKE_EVENTS when that is set.

Needs only amazon_kclpy (3.x, pure Python) and the standard library.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor


def _log(message: str) -> None:
    print(f"smoke_processor[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _append(path: str | None, obj: dict[str, Any]) -> None:
    if not path:
        return
    # One write per line with O_APPEND: lines from the per-shard children do not interleave.
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(obj) + "\n")


class SmokeProcessor(processor.RecordProcessorBase):
    def __init__(self) -> None:
        self.shard_id = "?"
        self.out = os.environ.get("SMOKE_OUT", "smoke-records.jsonl")
        self.events = os.environ.get("SMOKE_EVENTS")
        self.batch_checkpoint = os.environ.get("SMOKE_BATCH_CHECKPOINT", "1") != "0"

    def _event(self, name: str, **extra: Any) -> None:
        _log(f"{name} shard={self.shard_id} {extra or ''}")
        _append(
            self.events,
            {"event": name, "shard": self.shard_id, "t": time.time(), **extra},
        )

    def initialize(self, initialize_input: Any) -> None:
        self.shard_id = initialize_input.shard_id
        self._event("initialize", sequence_number=initialize_input.sequence_number)

    def process_records(self, process_records_input: Any) -> None:
        records = process_records_input.records
        if not records:
            return
        with open(self.out, "a", encoding="utf-8") as out:
            for record in records:
                line = {
                    "shard": self.shard_id,
                    "seq": record.sequence_number,
                    "subseq": record.sub_sequence_number,
                    "pk": record.partition_key,
                    "data": record.binary_data.decode("utf-8", "replace"),
                }
                out.write(json.dumps(line) + "\n")
        last = records[-1]
        if not self.batch_checkpoint:
            self._event("batch", n=len(records), seq=last.sequence_number)
            return
        # Raises amazon_kclpy.checkpoint_error.CheckpointError on a refused checkpoint; amazon_kclpy
        # catches exceptions from process_records, logs them and still reports the batch done.
        process_records_input.checkpointer.checkpoint(
            last.sequence_number, last.sub_sequence_number
        )
        self._event("checkpoint", n=len(records), seq=last.sequence_number)

    def lease_lost(self, lease_lost_input: Any) -> None:
        self._event("lease_lost")  # no checkpoint possible any more

    def shard_ended(self, shard_ended_input: Any) -> None:
        shard_ended_input.checkpointer.checkpoint()
        self._event("shard_ended")

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        shutdown_requested_input.checkpointer.checkpoint()
        self._event("shutdown_requested")


if __name__ == "__main__":
    kcl.KCLProcess(SmokeProcessor()).run()
