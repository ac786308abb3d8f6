"""The window operator: one WindowRule over one shard — event time, lateness, replay point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamproc.errors import RecordError, RuleCompileError
from streamproc.records import Pos, Record, pos_of
from streamproc.windows.aggregates import AggregateSet
from streamproc.windows.base import Engine, Evaluator, KeyReader, LateEvent, WindowResult
from streamproc.windows.eventtime import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS
from streamproc.windows.fastpaths import (
    NO_FLOOR,
    Handler,
    pane_handler,
    session_handler,
    sliding_count_handler,
)
from streamproc.windows.panes import PaneEngine
from streamproc.windows.sessions import SessionEngine
from streamproc.windows.sliding import SlidingEngine
from streamproc.windowspec import Hop, Session, Sliding, Tumble, WindowRule

__all__ = ["Handler", "WindowOperator"]


class WindowOperator:
    """State and logic of one WindowRule over one shard. Pure: no I/O, no clock, no logging.

    See the :mod:`streamproc.windows` docstring for the semantics. Not thread-safe: one shard
    loop owns it.
    """

    __slots__ = (
        "_engine",
        "_floor",
        "_key",
        "_lateness",
        "_max_time",
        "_name",
        "_record_setter",
        "_retention",
        "_seq",
        "_watermark",
        "_where",
        "rule",
    )

    def __init__(self, rule: WindowRule) -> None:
        self.rule = rule
        window = rule.window
        _check(rule)
        keys = KeyReader(rule.group_by)
        evaluator = Evaluator(rule, AggregateSet(rule.aggregates), keys)
        correction = rule.late == "correction"
        early = rule.emit == "early"
        engine: Engine
        if isinstance(window, Tumble):
            retention = window.size_ms if correction else 0
            engine = PaneEngine(evaluator, window.size_ms, window.size_ms, retention, early)
        elif isinstance(window, Hop):
            retention = window.size_ms if correction else 0
            engine = PaneEngine(evaluator, window.slide_ms, window.size_ms, retention, early)
        elif isinstance(window, Session):
            retention = window.gap_ms if correction else 0
            engine = SessionEngine(evaluator, window.gap_ms, retention, early)
        else:
            retention = window.range_ms if correction else 0
            engine = SlidingEngine(evaluator, window.range_ms, retention)
        self._engine = engine
        self._key = keys.read
        self._where = rule.where
        self._name = rule.name
        self._lateness = rule.allowed_lateness_ms
        self._retention = retention
        self._watermark: int | None = None
        self._max_time: int | None = None
        # The least event time a fast path takes: the greater of max time and watermark, or
        # past every event time the windows take while either is None. Kept by _refloor
        # wherever either changes, and by the fast paths (their event becomes both).
        self._floor = NO_FLOOR
        # The latest event whose time was a new maximum: its position, or (set by a fast path,
        # which makes no position per event) its record; read through _setter().
        self._record_setter: Pos | Record | None = None
        self._seq = 0

    def handler(self) -> Handler:
        """``handle(doc, event_time_ms, record, identity)``: :meth:`on_event` for ``record``, or
        its fast path where the rule has one: a function generated for the rule whose namespace
        holds them (Tumble, Hop, Session, count-only Sliding: :mod:`~streamproc.windows.fastpaths`).

        The caller keeps it; the operator does not, or operator and handler would hold each
        other and a dropped operator's state would wait for a full collection."""
        engine = self._engine
        if isinstance(engine, SlidingEngine):
            # A sliding window of COUNT(*)s decided by the count alone; else the general path.
            if engine.holds_by_count is not None and self.rule.where is None:
                return sliding_count_handler(self, engine, _top_key(self.rule.group_by))
        elif isinstance(engine, PaneEngine):
            if not engine.early or engine.slide == engine.size:  # not an early Hop
                return pane_handler(self, engine, _top_key(self.rule.group_by))
        else:
            return session_handler(self, engine, _top_key(self.rule.group_by))
        return self._general_handler()

    def _general_handler(self) -> Handler:
        """:meth:`on_event` as a handler: the record's position made for every event."""
        general = self.on_event

        def handle(
            doc: Mapping[str, Any], event_time_ms: int, record: Record, identity: str | None
        ) -> Sequence[WindowResult]:
            return general(doc, event_time_ms, pos_of(record), identity)

        return handle

    def _refloor(self) -> None:
        watermark, max_time = self._watermark, self._max_time
        if watermark is None or max_time is None:
            self._floor = NO_FLOOR
        else:
            self._floor = watermark if watermark > max_time else max_time

    def _setter(self) -> Pos | None:
        """The latest record setter's position, made once from its record if a fast path kept
        that (state stamped with it then shares one tuple, as it did the record's own)."""
        setter = self._record_setter
        if setter is None or isinstance(setter, tuple):
            return setter
        self._record_setter = position = pos_of(setter)
        return position

    def on_event(
        self,
        doc: Mapping[str, Any],
        event_time_ms: int,
        position: Pos,
        identity: str | None,
    ) -> list[WindowResult]:
        """Process one record: its own results (early, sliding, corrections) in window order,
        then final results of the windows its time closed, by (end, key, start).

        Raises MissingFieldError (a WHERE or GROUP BY field is missing), RecordError (a GROUP BY
        value is not a scalar, an event time outside the years 1 to 9999) or LateEvent; the
        operator is then unchanged: dead-letter it. A record filtered out by WHERE still moves
        event time (time passes for the shard).
        """
        if not MIN_EVENT_TIME_MS <= event_time_ms <= MAX_EVENT_TIME_MS:
            # parse_event_time refuses these too: a direct caller meets the same years
            raise RecordError(f"event time {event_time_ms!r} ms is outside the years 1 to 9999")
        where = self._where
        if where is not None and not where(doc):
            return self._time_passes(event_time_ms, position)
        key = self._key(doc)
        watermark = self._watermark
        late = False
        if watermark is not None and event_time_ms < watermark:
            if event_time_ms < watermark - self._retention:
                raise LateEvent(self._name, event_time_ms, watermark, self._retention)
            late = True
        self._seq += 1
        max_time = self._max_time
        if max_time is None or event_time_ms >= max_time:
            self._max_time = max_time = event_time_ms
            self._record_setter = position
            self._refloor()
        out: list[WindowResult] = []
        self._engine.add(
            key,
            doc,
            event_time_ms,
            position,
            identity,
            self._seq,
            self._setter() or position,  # never None here: set above at the latest
            max_time,
            watermark,
            late,
            out,
        )
        moved = max_time - self._lateness
        if watermark is None or moved > watermark:
            self._watermark = moved
            self._refloor()
            self._engine.close_until(moved, position, out)
        return out

    def _time_passes(self, event_time_ms: int, event: Pos | Record) -> list[WindowResult]:
        """A record WHERE filtered out (``event``: its position, or the record itself, whose
        position is then made only if windows close) moves event time only."""
        max_time = self._max_time
        if max_time is not None and event_time_ms < max_time:
            return []
        self._max_time = event_time_ms
        self._record_setter = event
        self._refloor()
        moved = event_time_ms - self._lateness
        if self._watermark is not None and moved <= self._watermark:
            return []
        self._watermark = moved
        self._refloor()
        out: list[WindowResult] = []
        self._engine.close_until(moved, self._setter(), out)
        return out

    def advance_to(self, watermark_ms: int) -> list[WindowResult]:
        """Move the watermark to ``watermark_ms`` if that is ahead (an idle shard's deadline):
        closes windows with ``end <= watermark_ms``; their results have no trigger. Later events
        behind it are late. A restart does not replay this: re-apply deadlines after a replay."""
        if self._watermark is not None and watermark_ms <= self._watermark:
            return []
        self._watermark = watermark_ms
        self._refloor()
        out: list[WindowResult] = []
        self._engine.close_until(watermark_ms, None, out)
        return out

    def flush(self) -> list[WindowResult]:
        """End of input: close every open window (results whose HAVING holds, no trigger) and
        free all state. The watermark moves past every window that held state (plus the
        correction retention), so a later event can never reopen an emitted window: it is
        either in a new window or late."""
        release = self._engine.release_watermark()
        out: list[WindowResult] = []
        if release is not None and (self._watermark is None or release > self._watermark):
            self._watermark = release
            self._refloor()
            # Sliding results fire on events only: closing would just forget every key one by
            # one (a heap pop each), which drop_all does at once.
            if not isinstance(self._engine, SlidingEngine):
                self._engine.close_until(release, None, out)
        self._engine.drop_all()
        return out

    @property
    def watermark_ms(self) -> int | None:
        """Max event time seen minus the allowed lateness (or a later ``advance_to``/flush)."""
        return self._watermark

    def oldest_position(self) -> Pos | None:
        """Where a replay must start to rebuild this operator's state exactly (None: no event).

        It is a *record setter* (an event whose time was >= every earlier one) at or before the
        first record of any state still held (open windows, retained closed windows, sliding
        items, and the records behind a sliding key's edge-trigger): the latest such one, except
        in a sliding rule, which keeps one per second of event time (see
        :mod:`~streamproc.windows.sliding`) and gives the first of the oldest needed second.
        Starting at a record setter rebuilds the watermark too, so every replayed event is
        judged late or on time as before. With no state held it is the latest record setter. It
        only moves forward. Feed a fresh operator the records from here up to the last processed
        one (discarding their results): it then continues exactly as this one would.
        ``advance_to``/``flush`` are not rebuilt.
        """
        held = self._engine.oldest_rs()
        return held if held is not None else self._setter()

    def state_size(self) -> tuple[int, int]:
        """(keys holding state, stored items: pane states, sessions or sliding events)."""
        return self._engine.state_size()


def _top_key(group_by: tuple[str, ...]) -> str | None:
    """The GROUP BY field a fast path reads directly: one top-level field, else None."""
    return group_by[0] if len(group_by) == 1 and "." not in group_by[0] else None


def _check(rule: WindowRule) -> None:
    window = rule.window
    sizes: dict[str, int]
    if isinstance(window, Tumble):
        sizes = {"size": window.size_ms}
    elif isinstance(window, Hop):
        sizes = {"slide": window.slide_ms, "size": window.size_ms}
    elif isinstance(window, Session):
        sizes = {"gap": window.gap_ms}
    elif isinstance(window, Sliding):
        sizes = {"range": window.range_ms}
    else:
        raise RuleCompileError(f"unknown window kind {window!r}", rule=rule.name)
    for name, value in sizes.items():
        if type(value) is not int or value <= 0:
            raise RuleCompileError(
                f"window {name} must be a positive whole number of ms, not {value!r}",
                rule=rule.name,
            )
    if isinstance(window, Hop) and window.size_ms % window.slide_ms:
        raise RuleCompileError(
            f"HOP size {window.size_ms} ms is not a whole multiple of its slide "
            f"{window.slide_ms} ms",
            rule=rule.name,
            hint="pick a size that the slide divides",
        )
    if type(rule.allowed_lateness_ms) is not int or rule.allowed_lateness_ms < 0:
        raise RuleCompileError(
            f"allowed lateness must be a whole number of ms >= 0, not {rule.allowed_lateness_ms!r}",
            rule=rule.name,
        )
