"""``STREAMPROC_KCL_TRACE=DIR``: what each KCL child processed, for tests and debugging."""

from __future__ import annotations

import os
import time
from typing import Any, TextIO

import orjson

from streamproc.records import Record


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
