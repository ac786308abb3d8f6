"""Values that flow through the pipeline: records in, alerts and dead letters out.

All are frozen dataclasses with ``__slots__``: cheap to create, safe to share between the loop
and connectors, and impossible to mutate by accident after a sink has seen them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar

import orjson


class Position(NamedTuple):
    """A point in a shard: Kinesis sequence number plus KPL sub-sequence number.

    Sequence numbers are opaque decimal strings of any length (moto uses "1", "2"...; Kinesis uses
    56 digits). They are compared as integers, never as strings. A named tuple, not a dataclass:
    one is made per record on the hot path, and a tuple is made three times faster.
    """

    sequence_number: int
    sub_sequence_number: int = 0

    @classmethod
    def of(cls, sequence_number: str, sub_sequence_number: int = 0) -> Position:
        return cls(int(sequence_number), sub_sequence_number)

    @property
    def sequence(self) -> str:
        return str(self.sequence_number)


T = TypeVar("T")

# A position as window and rule state keep it: a plain (sequence number, sub-sequence number)
# tuple. It compares like a Position (which is one), costs less to make, and, unlike a tuple
# subclass, the garbage collector stops tracking it: state holds one per event.
Pos = tuple[int, int]


def pos_of(record: Record) -> Pos:
    """``record``'s position as state keeps it. Made only where a position is kept or compared:
    reading a 56-digit sequence number as an integer costs about 0.2 us, too much to pay for
    every record on the hot path, which hands the record itself to its steps instead."""
    return (int(record.sequence_number), record.sub_sequence_number)


def quick_init(cls: type[T]) -> type[T]:
    """Give the frozen slots dataclass ``cls`` a faster ``__init__``, and return ``cls``. Write
    it above ``@dataclass`` (it runs after it).

    The generated ``__init__`` of a frozen dataclass sets each field through
    ``object.__setattr__``, about 100 ns a field: 1.8 us for an :class:`Alert`, which the hot
    path makes for every match. This one makes the new object, for the time of the call, an
    instance of a private subclass that adds no slots and allows setting them (``__class__``
    assignment between layouts that are the same), sets every field with a plain attribute
    store, and makes it a ``cls`` again: about a third of the time, with the same parameters
    and defaults, and the same frozen object as before. (An instance of a subclass of ``cls``
    is set field by field through the slots' descriptors instead.) The source is built from
    the field names alone.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or any(
        f.default_factory is not dataclasses.MISSING or not f.init or f.kw_only for f in fields
    ):
        raise TypeError(f"quick_init: {cls.__name__} has fields it cannot set positionally")
    names = [f.name for f in fields]
    # object's own __setattr__/__delattr__: the type then sets attributes without a Python call
    opened = type(
        f"_{cls.__name__}Init",
        (cls,),
        {
            "__slots__": (),
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            "__module__": cls.__module__,
        },
    )
    namespace: dict[str, Any] = {
        "__builtins__": {},
        "CLS": cls,
        "OPENED": opened,
        "SET": object.__setattr__,
    }
    namespace.update({f"set_{name}": getattr(cls, name).__set__ for name in names})
    stores = "".join(f"        self.{name} = {name}\n" for name in names)
    slow = "".join(f"        set_{name}(self, {name})\n" for name in names)
    source = (
        f"def __init__(self, {', '.join(names)}):\n"
        "    if self.__class__ is CLS:\n"
        "        SET(self, '__class__', OPENED)\n"
        f"{stores}"
        "        SET(self, '__class__', CLS)\n"
        "    else:\n"
        f"{slow}"
    )
    code = compile(source, f"<{cls.__name__}.__init__>", "exec", dont_inherit=True)
    # Nothing is executed: the function's code object is taken out of the compiled module.
    (init_code,) = (c for c in code.co_consts if isinstance(c, types.CodeType))
    defaults = tuple(f.default for f in fields if f.default is not dataclasses.MISSING)
    init = types.FunctionType(init_code, namespace, "__init__", defaults)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@quick_init
@dataclass(frozen=True, slots=True)
class Record:
    """One user record read from a shard (KPL aggregates are already split)."""

    data: bytes
    partition_key: str
    sequence_number: str
    sub_sequence_number: int
    arrival_ms: int  # approximate arrival timestamp, epoch milliseconds, UTC
    shard_id: str

    @property
    def position(self) -> Position:
        return Position(int(self.sequence_number), self.sub_sequence_number)

    @property
    def arrival_time(self) -> datetime:
        return datetime.fromtimestamp(self.arrival_ms / 1000, tz=UTC)

    @property
    def identity(self) -> str:
        """Where the record sits in its stream: the fallback identity of an alert."""
        return f"{self.shard_id}/{self.sequence_number}/{self.sub_sequence_number}"


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """What one read of one shard returned. ``records`` may be empty (nothing new yet)."""

    shard_id: str
    records: list[Record]
    millis_behind_latest: int | None = None


def record_identity(doc: Mapping[str, Any], identity_field: str, record: Record) -> str:
    """What identifies ``record`` in its alerts' ids: the value of its ``identity_field`` (a
    transaction id), or, without one, where it sits in its stream (:attr:`Record.identity`).

    Made only when an alert needs it: the shard loop passes ``None`` for "not made yet" to the
    window and stateful steps, which call this when they have an alert to write."""
    value = doc.get(identity_field)
    if value is None or isinstance(value, (dict, list)):
        return record.identity
    return f"{identity_field}={value}"


def make_alert_id(rule: str, rule_version: int | str, identity: str) -> str:
    """Deterministic alert id: the same rule version on the same record gives the same id.

    32 hex characters (128 bits of BLAKE2b) fit every deduplication field we write: SQS/SNS FIFO
    deduplication ids (<= 128 chars), DynamoDB keys, EventBridge detail.
    """
    digest = hashlib.blake2b(
        f"{rule}\x1f{rule_version}\x1f{identity}".encode(), digest_size=16
    ).hexdigest()
    return digest


Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


@quick_init
@dataclass(frozen=True, slots=True)
class Alert:
    """The output of a rule for one record, or of a window rule for one key and window.

    ``alert_id`` is deterministic (see :func:`make_alert_id`) and is in every payload, so any
    downstream consumer can deduplicate. ``key`` is the business key as text (e.g. the card),
    used as the FIFO message group; ``key_fields`` is the same key as an object (the rule's key
    field, or a window rule's group-by fields). ``sinks`` names the sinks the alert must reach.
    ``window_start``/``window_end`` (ISO-8601 UTC) are set for window alerts; ``correction``
    marks an alert re-issued for a window that a late event changed.
    """

    alert_id: str
    rule: str
    rule_version: int
    severity: Severity
    key: str | None
    fields: Mapping[str, Any]
    sinks: tuple[str, ...]
    shard_id: str
    sequence_number: str
    sub_sequence_number: int = 0
    event_time: str | None = None
    key_fields: Mapping[str, Any] | None = None
    window_start: str | None = None
    window_end: str | None = None
    correction: bool = False
    # EventBridge ``source`` and ``detail-type`` for this alert (None: the sink's configured
    # ones), and whether ``fields`` also go at the top level of the payload (inventory alerts).
    event_source: str | None = None
    detail_type: str | None = None
    flat_fields: bool = False

    def payload(self) -> dict[str, Any]:
        """The JSON object every sink sends. Deterministic for a given rule version and record."""
        out = {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "rule_version": self.rule_version,
            "severity": self.severity,
            "key": None if self.key_fields is None else dict(self.key_fields),
            "window_start": self.window_start,
            "window_end": self.window_end,
            "correction": self.correction,
            "event_time": self.event_time,
            "fields": dict(self.fields),
            "source": {
                "shard_id": self.shard_id,
                "sequence_number": self.sequence_number,
                "sub_sequence_number": self.sub_sequence_number,
            },
        }
        if self.flat_fields:
            for name, value in self.fields.items():
                out.setdefault(name, value)
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.payload(), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something that could not be processed or delivered, with the reason.

    ``kind`` is "record" for input the pipeline refused (the original bytes are kept, base64) and
    "alert" for an alert a sink rejected permanently (the alert payload is kept).
    """

    kind: Literal["record", "alert"]
    reason: str
    shard_id: str
    sequence_number: str
    sub_sequence_number: int = 0
    sink: str | None = None
    rule: str | None = None
    alert_id: str | None = None
    data: bytes = b""
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @classmethod
    def of_record(cls, record: Record, reason: str, rule: str | None = None) -> DeadLetter:
        """A refused input record, with its original bytes."""
        return cls(
            kind="record",
            reason=reason,
            shard_id=record.shard_id,
            sequence_number=record.sequence_number,
            sub_sequence_number=record.sub_sequence_number,
            rule=rule,
            data=record.data,
        )

    def payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "shard_id": self.shard_id,
            "sequence_number": self.sequence_number,
            "sub_sequence_number": self.sub_sequence_number,
            "sink": self.sink,
            "rule": self.rule,
            "alert_id": self.alert_id,
            "data_base64": base64.b64encode(self.data).decode("ascii"),
            "at": self.at,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.payload())
