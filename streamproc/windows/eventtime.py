"""Event time: a record's timestamp as integer milliseconds since the epoch (UTC), and back.

Accepted: ISO-8601 strings *with* an offset or ``Z`` (``2024-05-01T12:00:00.250Z``,
``2024-05-01T14:00:00+02:00``), and JSON numbers: epoch seconds when their magnitude is below
10^11 (that is before the year 5138), else epoch milliseconds. Sub-millisecond digits are cut
(ISO: floor) or rounded (numbers). Everything else is bad data and raises RecordError with a
reason: naive ISO strings (ambiguous: which zone?), other strings, booleans, null, lists,
objects, NaN/infinity, and times outside the years 1..9999.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from streamproc.errors import RecordError

__all__ = [
    "MAX_EVENT_TIME_MS",
    "MIN_EVENT_TIME_MS",
    "SECONDS_LIMIT",
    "format_event_time",
    "parse_event_time",
]

SECONDS_LIMIT = 10**11  # numbers below this (in magnitude) are seconds, others milliseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
#: Event times the windows take, in ms since the epoch: the years 1 to 9999.
MIN_EVENT_TIME_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_EVENT_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_JSON_NAMES = {bool: "a boolean", list: "a list", dict: "an object", type(None): "null"}


# The common form ``YYYY-MM-DDTHH:MM:SS.mmmZ`` takes two dict lookups: the prefix up to the
# dot, whose whole seconds were cached when a full parse accepted it, and the "mmmZ" tail (keys
# are exactly the 1,000 valid tails). About twice as fast as fromisoformat plus the timedelta
# arithmetic. Bounded: the prefix cache is cleared when it fills up.
_SECONDS: dict[str, int] = {}
_SECONDS_LIMIT = 4096
_TAILS = {f"{ms:03d}Z": ms for ms in range(1000)}


# The last string parsed and its value: the window and inventory rules of a record read the
# same string object from the same document, and records in the same millisecond (ten per ms
# at 10,000 records/s) carry the same text, so most parses are one comparison. One tuple,
# replaced whole, so threads never see a text with another text's value; holding the text
# keeps its identity from being reused.
_LAST: tuple[object, int] = (object(), 0)


def parse_event_time(value: Any) -> int:
    """Milliseconds since the epoch (UTC) of an event-time field value; RecordError if bad."""
    global _LAST
    last = _LAST
    if last[0] is value:
        return last[1]
    if value.__class__ is not str:
        return _parse(value, type(value))
    if value == last[0]:  # (a string's equal text only: 1, 1.0 and true are equal)
        return last[1]
    if len(value) == 24:
        tail = _TAILS.get(value[20:])
        if tail is not None:
            base = _SECONDS.get(value[:20])
            if base is not None:
                _LAST = (value, base + tail)
                return base + tail
            millis = _parse(value, str)
            if value[19] == ".":  # the full parse accepted "<prefix>.<tail>"
                if len(_SECONDS) >= _SECONDS_LIMIT:
                    _SECONDS.clear()
                _SECONDS[value[:20]] = millis - tail
            return millis
    return _parse(value, str)


def _parse(value: Any, kind: type) -> int:
    if kind is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise RecordError(
                f"event time {value!r} is not an ISO-8601 timestamp "
                "(write e.g. 2024-05-01T12:00:00Z, or epoch seconds/milliseconds as a number)"
            ) from None
        if parsed.tzinfo is None:
            raise RecordError(
                f"event time {value!r} has no UTC offset: add Z or +hh:mm "
                "(a time without a zone is ambiguous)"
            )
        millis: int = (parsed - _EPOCH) // _MS
    elif kind is int or kind is float:
        if not math.isfinite(value):
            raise RecordError(f"event time {value!r} is not a finite number")
        scaled = value * 1000 if -SECONDS_LIMIT < value < SECONDS_LIMIT else value
        millis = scaled if kind is int else round(scaled)
    else:
        name = _JSON_NAMES.get(kind, f"a {kind.__name__}")
        raise RecordError(f"event time must be an ISO-8601 string or an epoch number, got {name}")
    if not MIN_EVENT_TIME_MS <= millis <= MAX_EVENT_TIME_MS:
        raise RecordError(f"event time {value!r} is outside the years 1 to 9999")
    return millis


_PREFIXES: dict[int, str] = {}  # whole seconds -> "YYYY-MM-DDTHH:MM:SS." (bounded, like _SECONDS)
_FRACTIONS = [f"{ms:03d}Z" for ms in range(1000)]  # the tails: ms -> "mmmZ"


def format_event_time(millis: int) -> str:
    """ISO-8601 UTC with millisecond precision and a ``Z``; plain text if out of range."""
    seconds, fraction = divmod(millis, 1000)
    prefix = _PREFIXES.get(seconds)
    if prefix is not None:
        return prefix + _FRACTIONS[fraction]
    text = _format(millis)
    if text.endswith("Z") and len(text) == 24:
        if len(_PREFIXES) >= _SECONDS_LIMIT:
            _PREFIXES.clear()
        _PREFIXES[seconds] = text[:20]
    return text


def _format(millis: int) -> str:
    try:
        text = (_EPOCH + millis * _MS).isoformat(timespec="milliseconds")
    except OverflowError:
        return f"{millis} ms since the epoch"
    return text.replace("+00:00", "Z")
