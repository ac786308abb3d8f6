"""The window operator: one WindowRule over one shard — event time, lateness, replay point."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamproc.errors import RuleCompileError
from streamproc.records import Position
from streamproc.windows.aggregates import AggregateSet
from streamproc.windows.base import Engine, Evaluator, KeyReader, LateEvent, WindowResult
from streamproc.windows.panes import PaneEngine
from streamproc.windows.sessions import SessionEngine
from streamproc.windows.sliding import SlidingEngine
from streamproc.windowspec import Hop, Session, Sliding, Tumble, WindowRule

__all__ = ["WindowOperator"]


class WindowOperator:
    """State and logic of one WindowRule over one shard. Pure: no I/O, no clock, no logging.

    See the :mod:`streamproc.windows` docstring for the semantics. Not thread-safe: one shard
    loop owns it.
    """

    __slots__ = (
        "_engine",
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
        self._record_setter: Position | None = None  # latest event whose time was a new maximum
        self._seq = 0

    def on_event(
        self,
        doc: Mapping[str, Any],
        *,
        event_time_ms: int,
        position: Position,
        identity: str,
    ) -> list[WindowResult]:
        """Process one record: its own results (early, sliding, corrections) in window order,
        then final results of the windows its time closed, by (end, key, start).

        Raises MissingFieldError (a WHERE or GROUP BY field is missing), RecordError (a GROUP BY
        value is not a scalar) or LateEvent; the operator is then unchanged: dead-letter it.
        A record filtered out by WHERE still moves event time (time passes for the shard).
        """
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
        out: list[WindowResult] = []
        self._engine.add(
            key,
            doc,
            event_time_ms,
            position,
            identity,
            self._seq,
            self._record_setter or position,  # never None here: set above at the latest
            watermark,
            late,
            out,
        )
        moved = max_time - self._lateness
        if watermark is None or moved > watermark:
            self._watermark = moved
            self._engine.close_until(moved, position, out)
        return out

    def _time_passes(self, event_time_ms: int, position: Position) -> list[WindowResult]:
        max_time = self._max_time
        if max_time is not None and event_time_ms < max_time:
            return []
        self._max_time = event_time_ms
        self._record_setter = position
        moved = event_time_ms - self._lateness
        if self._watermark is not None and moved <= self._watermark:
            return []
        self._watermark = moved
        out: list[WindowResult] = []
        self._engine.close_until(moved, position, out)
        return out

    def advance_to(self, watermark_ms: int) -> list[WindowResult]:
        """Move the watermark to ``watermark_ms`` if that is ahead (an idle shard's deadline):
        closes windows with ``end <= watermark_ms``; their results have no trigger. Later events
        behind it are late. A restart does not replay this: re-apply deadlines after a replay."""
        if self._watermark is not None and watermark_ms <= self._watermark:
            return []
        self._watermark = watermark_ms
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
            self._engine.close_until(release, None, out)
        self._engine.drop_all()
        return out

    @property
    def watermark_ms(self) -> int | None:
        """Max event time seen minus the allowed lateness (or a later ``advance_to``/flush)."""
        return self._watermark

    def oldest_position(self) -> Position | None:
        """Where a replay must start to rebuild this operator's state exactly (None: no event).

        It is the latest *record setter* (an event whose time was >= every earlier one) at or
        before the first record of any state still held (open windows, retained closed windows,
        sliding items, and the records behind a sliding key's edge-trigger). Starting at a record
        setter rebuilds the watermark too, so every replayed event is judged late or on time as
        before. With no state held it is the latest record setter. Feed a fresh operator the
        records from here up to the last processed one (discarding their results): it then
        continues exactly as this one would. ``advance_to``/``flush`` are not rebuilt.
        """
        held = self._engine.oldest_rs()
        return held if held is not None else self._record_setter

    def state_size(self) -> tuple[int, int]:
        """(keys holding state, stored items: pane states, sessions or sliding events)."""
        return self._engine.state_size()


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
