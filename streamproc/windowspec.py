"""What a windowed rule *is*: plain, frozen configuration, kept apart from window logic.

The SQL compiler (``streamproc.windowsql``) turns a ``SELECT ... GROUP BY ... HAVING`` rule into a
:class:`WindowRule`; the window engine (``streamproc.windows``) runs it. Times are integers in
milliseconds since the epoch (UTC); a window covers ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from streamproc.records import Severity


@dataclass(frozen=True, slots=True)
class Tumble:
    """Fixed, non-overlapping windows aligned to the epoch: ``[k*size, (k+1)*size)``."""

    size_ms: int


@dataclass(frozen=True, slots=True)
class Hop:
    """Overlapping windows of ``size_ms`` starting every ``slide_ms`` (aligned to the epoch);
    ``size_ms`` is a whole multiple of ``slide_ms``, so an event is in ``size/slide`` windows."""

    slide_ms: int
    size_ms: int


@dataclass(frozen=True, slots=True)
class Session:
    """Per key: events closer than ``gap_ms`` to each other belong to one window, which is
    ``[first event, last event + gap)``; sessions that come to overlap are merged."""

    gap_ms: int


@dataclass(frozen=True, slots=True)
class Sliding:
    """Per event: the window ``(t - range_ms, t]`` ending at the event's own time ``t``, over the
    events of its key. Evaluated on every event; fires on the event that makes HAVING true
    (after it was false for the key), so the alert comes at the 6th transaction, not later."""

    range_ms: int


WindowKind = Tumble | Hop | Session | Sliding

AggregateFunction = Literal["count", "count_distinct", "sum", "avg", "min", "max"]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One aggregate. ``field`` is a dotted path (None only for ``COUNT(*)``); ``name`` is the
    canonical text (``COUNT(*)``, ``SUM(amount)``, ``COUNT(DISTINCT merchant)``) by which HAVING
    refers to it; ``alias`` is the output name (``AS n``, else the canonical text).

    NULL or missing values are ignored by every aggregate but ``COUNT(*)`` (SQL semantics); a
    non-numeric value in SUM/AVG is ignored too. MIN/MAX compare numbers with numbers and
    strings with strings (mixed families: the first family seen wins, others are ignored).
    Over no values SUM/AVG/MIN/MAX are NULL (None), COUNTs are 0."""

    function: AggregateFunction
    field: str | None
    name: str
    alias: str


EmitMode = Literal["final", "early"]
LatePolicy = Literal["dead_letter", "correction"]


@dataclass(frozen=True, slots=True)
class WindowRule:
    """A windowed rule, compiled.

    - ``where``: filter applied to each record before it enters a window (None: all records).
      It may raise MissingFieldError (the record is then dead-lettered for this rule).
    - ``group_by``: dotted field paths; their values form the key. A record missing one is
      dead-lettered for this rule (reason names the field).
    - ``time_field``: dotted path of the event time (ISO-8601 with offset, or epoch seconds /
      milliseconds as a number: values > 10^11 are milliseconds); None means the record's
      arrival time. A missing/unparseable time dead-letters the record for this rule.
    - ``having``: predicate over a mapping holding every aggregate under both its ``name`` and
      its ``alias``, plus the group-by fields; None means "always" (every window emits).
    - ``emit``: ``final`` = one alert per key and window when the window closes and HAVING holds;
      ``early`` = one alert per key and window the first time HAVING holds (never again for that
      key and window). Sliding windows always fire on the crossing event (see :class:`Sliding`).
    - ``allowed_lateness_ms``: the shard's watermark is max event time seen minus this.
    - ``late``: what happens to an event behind the watermark (its windows are closed):
      ``dead_letter`` sends it to the dead-letter destination with the reason "late event";
      ``correction`` emits a correction alert for the window it belongs to, carrying the
      window's aggregates recomputed with the late event (``correction: true`` in the alert).
    - ``select``: output columns in order: group-by field paths and aggregate aliases.
    """

    name: str
    version: int
    window: WindowKind
    group_by: tuple[str, ...]
    aggregates: tuple[Aggregate, ...]
    select: tuple[str, ...]
    having: Callable[[Mapping[str, Any]], bool] | None = None
    where: Callable[[Mapping[str, Any]], bool] | None = None
    time_field: str | None = "event_time"
    emit: EmitMode = "final"
    allowed_lateness_ms: int = 0
    late: LatePolicy = "dead_letter"
    severity: Severity = "MEDIUM"
    sinks: tuple[str, ...] = ()
    description: str = ""
    sql: str = ""
    origin: str = ""
    # The names HAVING reads (aggregate names, aliases, GROUP BY paths); None: unknown.
    having_reads: frozenset[str] | None = None
