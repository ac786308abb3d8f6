"""The daemon's protocol on the child's side: amazon_kclpy's ``KCLProcess``, with a faster parse
of ``processRecords``.

amazon_kclpy decodes every message line with ``json.loads(object_hook=...)``, which builds one
``messages.Record`` per record (including a ``datetime`` the child never uses), after which the
worker turns each into our :class:`~streamproc.records.Record`. For ``processRecords`` lines
:func:`load_action` parses with orjson instead and leaves the records as the daemon's JSON
objects: :class:`RawProcessRecords` hands them to the worker, which builds our records in one
pass. Every other message (initialize, checkpoint answers, shutdowns) still goes through
amazon_kclpy's own decoding, and the protocol itself (status replies, checkpoints) is
amazon_kclpy's, unchanged.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable, Sequence
from typing import IO, Any

import orjson
from amazon_kclpy import kcl, messages

from streamproc.records import Record

__all__ = ["RawProcessRecords", "kcl_process", "load_action", "records_of"]

# base64.b64decode without its Python wrapper: a2b_base64 takes ASCII text itself and refuses
# other text (ValueError) and other types (TypeError) as the wrapper does; neither is strict.
_b64decode = binascii.a2b_base64


class RawProcessRecords(messages.ProcessRecordsInput):  # type: ignore[misc]
    """A ``processRecords`` message whose records are still the daemon's JSON objects.

    ``records`` gives amazon_kclpy's ``messages.Record`` objects (built on first use) to any
    code that expects them; :meth:`to_records` builds ours directly.
    """

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(message)
        self.raw: Sequence[dict[str, Any]] = message["records"]
        self._kcl_records: list[Any] | None = None

    @property
    def records(self) -> list[Any]:
        if self._kcl_records is None:
            self._kcl_records = [messages.Record(r) for r in self.raw]
        return self._kcl_records

    def to_records(self, shard_id: str) -> list[Record]:
        """Our records, as :func:`records_of` builds them from amazon_kclpy's: the data
        base64-decoded, a missing sub-sequence number as 0. (The daemon writes both numbers as
        JSON integers; anything else goes through ``int`` as amazon_kclpy's path does.)"""
        records: list[Record] = []
        append = records.append
        b64decode = _b64decode
        for r in self.raw:
            sub = r.get("subSequenceNumber")
            arrival = r["approximateArrivalTimestamp"]
            append(
                Record(
                    b64decode(r["data"]),
                    r["partitionKey"],
                    r["sequenceNumber"],
                    sub if sub.__class__ is int else int(sub or 0),
                    arrival if arrival.__class__ is int else int(arrival),
                    shard_id,
                )
            )
        return records


def records_of(message: Any, shard_id: str) -> list[Record]:
    """Our records of a ``processRecords`` message: directly from the daemon's JSON for a
    :class:`RawProcessRecords`, else from amazon_kclpy's ``messages.Record`` objects."""
    if isinstance(message, RawProcessRecords):
        return message.to_records(shard_id)
    return [
        Record(
            data=r.binary_data,
            partition_key=r.partition_key,
            sequence_number=r.sequence_number,
            sub_sequence_number=int(r.sub_sequence_number or 0),
            arrival_ms=int(r.timestamp_millis),
            shard_id=shard_id,
        )
        for r in message.records
    ]


def load_action(line: str, fallback: Callable[[str], Any]) -> Any:
    """One message line from the daemon: ``processRecords`` as :class:`RawProcessRecords`,
    anything else as ``fallback`` (amazon_kclpy's own loader) decodes it."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return fallback(line)  # its error, or what it makes of the line
    if message.__class__ is dict and message.get("action") == "processRecords":
        return RawProcessRecords(message)
    return fallback(line)


def kcl_process(
    processor: Any, input_file: IO[str], output_file: IO[str], error_file: IO[str] | None = None
) -> kcl.KCLProcess:
    """amazon_kclpy's ``KCLProcess`` around ``processor``, parsing with :func:`load_action`."""
    if error_file is None:
        process = kcl.KCLProcess(processor, input_file=input_file, output_file=output_file)
    else:
        process = kcl.KCLProcess(
            processor, input_file=input_file, output_file=output_file, error_file=error_file
        )
    handler = process.io_handler
    handler.load_action = functools.partial(load_action, fallback=handler.load_action)
    return process
