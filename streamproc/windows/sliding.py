"""Sliding windows: on every event at ``t``, the key's events in ``(t - range, t]``.

Per key the engine keeps the accepted events that a future window can still reach, as
``(time, arrival, record-setter, values)`` items sorted by time (``bisect`` finds a window;
in-order events append). Once an event of the key arrives out of order, the items are also kept
in arrival order, whose head gives the oldest position to replay from (until then the time order
is the arrival order).
An event's window holds the key's events that arrived so far with a time in its range, including
out-of-order ones.

HAVING is edge-triggered per key: a result fires when HAVING holds after an event and did not
hold after the key's previous event; it re-arms once HAVING is false again. Items at or before
the horizon ``watermark - range - retention`` can never be in a window again and are dropped; a
key whose items are all gone is forgotten, so its next event starts afresh (previous: false).
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Hashable, Mapping
from operator import itemgetter
from typing import Any

from streamproc.records import Pos
from streamproc.windows.base import Evaluator, WindowResult

__all__ = ["SlidingEngine"]

_Item = tuple[int, int, Pos, tuple[Any, ...]]  # time, arrival sequence, record-setter, values
_TIME = itemgetter(0)


class _KeyState:
    __slots__ = ("basis", "by_arrival", "by_time", "dead", "due", "first", "previous")

    def __init__(self) -> None:
        self.by_time: list[_Item] = []
        # The time of by_time[0] (None: no items), read where by_time[0] itself would cost two
        # memory misses: the fast path checks it on every event.
        self.first: int | None = None
        self.by_arrival: deque[_Item] | None = None  # only after an out-of-order event
        self.previous = False  # HAVING held after the key's previous event
        self.basis: Pos | None = None  # where a replay rebuilds ``previous`` and the items
        self.dead = False
        self.due: int | None = None


class SlidingEngine:
    """Sliding windows of one rule over one shard (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, range_ms: int, retention: int) -> None:
        self._ev = evaluator
        self._aggs = evaluator.aggregates
        self._keys = evaluator.keys
        self.range_ms = range_ms
        self._retention = retention
        self.reach = range_ms + retention  # an item is needed until watermark - reach passes it
        self._width = len(evaluator.rule.aggregates)
        self.by_key: dict[Hashable, _KeyState] = {}
        self.heap: list[tuple[int, int, Hashable, _KeyState]] = []
        self._order = itertools.count()
        # HAVING's verdict per window count, when only the count decides it (see add).
        self.holds_by_count: dict[int, bool] | None = (
            {} if self._aggs.count_star_only and evaluator.having_ignores_key else None
        )

    def add(
        self,
        key: Hashable,
        doc: Mapping[str, Any],
        event_time: int,
        position: Pos,
        identity: str,
        seq: int,
        rs: Pos,
        watermark: int | None,
        late: bool,
        out: list[WindowResult],
    ) -> None:
        state = self.by_key.get(key)
        if state is None:
            state = self.by_key[key] = _KeyState()
        elif watermark is not None:
            horizon = watermark - self.reach
            items = state.by_time
            if items and items[0][0] <= horizon:
                self._prune(state, horizon)
            if not items:
                state.previous = False  # nothing within reach: the key starts afresh
        aggs = self._aggs
        item = (event_time, seq, rs, () if aggs.count_star_only else aggs.extract(doc))
        by_time = state.by_time
        by_arrival = state.by_arrival
        if not by_time or by_time[-1][0] <= event_time:
            by_time.append(item)
            if by_arrival is not None:
                by_arrival.append(item)
            high = len(by_time)  # in order: every item is at or before this event
        else:
            if by_arrival is None:
                by_arrival = state.by_arrival = deque(by_time)  # arrival order so far
            by_arrival.append(item)
            insort(by_time, item)
            high = bisect_right(by_time, event_time, key=_TIME)
        state.basis = (by_time if by_arrival is None else by_arrival)[0][2]
        state.first = by_time[0][0]
        due = by_time[-1][0] + self.reach
        if state.due is None or due < state.due:
            state.due = due
            heapq.heappush(self.heap, (due, next(self._order), key, state))
        count = high - bisect_right(by_time, event_time - self.range_ms, key=_TIME)
        if aggs.count_star_only:
            # HAVING over counts alone is decided by the count: cached per count when it does
            # not read the key either (the usual "HAVING COUNT(*) > 5").
            cached = None if self.holds_by_count is None else self.holds_by_count.get(count)
            holds = self.count_holds(key, event_time, count) if cached is None else cached
            if holds and not state.previous:
                self.fire_count(key, event_time, count, position, identity, late, out)
        else:
            window = aggs.new_state(event_time)
            for item_time, item_seq, _, values in by_time[high - count : high]:
                aggs.add_values(window, values, item_time, item_seq)
            output = self._keys.output(key)
            values_now = self._ev.values(output, window)
            holds = values_now is not None
            if values_now is not None and not state.previous:
                out.append(self._result(output, event_time, values_now, position, identity, late))
        state.previous = holds

    def start_key(self, key: Hashable, item: _Item) -> _KeyState:
        """The state of a new key holding its first (in-order) item: :meth:`add` for an event
        of an unknown key, as the operator's fast path uses it."""
        state = self.by_key[key] = _KeyState()
        state.by_time.append(item)
        state.first = item[0]
        state.basis = item[2]
        state.due = due = item[0] + self.reach
        heapq.heappush(self.heap, (due, next(self._order), key, state))
        return state

    def count_holds(self, key: Hashable, event_time: int, count: int) -> bool:
        """HAVING's verdict for a window of ``count`` events (count-only rules), cached."""
        output = self._keys.output(key)
        holds = self._ev.values_of(output, (count,) * self._width) is not None
        if self.holds_by_count is not None:
            self.holds_by_count[count] = holds
        return holds

    def fire_count(
        self,
        key: Hashable,
        event_time: int,
        count: int,
        position: Pos,
        identity: str,
        late: bool,
        out: list[WindowResult],
    ) -> None:
        output = self._keys.output(key)
        # Every aggregate is COUNT(*): each one's value is the count.
        values_now = self._ev.values_of(output, (count,) * self._width)
        if values_now is not None:
            out.append(self._result(output, event_time, values_now, position, identity, late))

    def _result(
        self,
        output: tuple[Any, ...],
        event_time: int,
        values: dict[str, Any],
        position: Pos,
        identity: str,
        late: bool,
    ) -> WindowResult:
        """The result of the event at ``event_time``: its window ``(t - range, t]``."""
        return self._ev.result(
            output,
            event_time - self.range_ms + 1,
            event_time + 1,
            values,
            event_time,
            position,
            identity,
            late,
        )

    @staticmethod
    def _prune(state: _KeyState, horizon: int) -> None:
        by_time = state.by_time
        if by_time and by_time[0][0] <= horizon:
            del by_time[: bisect_right(by_time, horizon, key=_TIME)]
        by_arrival = state.by_arrival
        while by_arrival and by_arrival[0][0] <= horizon:
            by_arrival.popleft()

    def _schedule(self, key: Hashable, state: _KeyState, due: int) -> None:
        if state.due is None or due < state.due:
            state.due = due
            heapq.heappush(self.heap, (due, next(self._order), key, state))

    def close_until(self, watermark: int, trigger: Pos | None, out: list[WindowResult]) -> None:
        """Forget keys whose every item is beyond reach (sliding results fire on events only)."""
        heap = self.heap
        while heap and heap[0][0] <= watermark:
            due, _, key, state = heapq.heappop(heap)
            if state.dead or due != state.due:
                continue
            state.due = None
            latest = state.by_time[-1][0] + self.reach
            if latest > watermark:
                self._schedule(key, state, latest)
            else:
                state.dead = True
                del self.by_key[key]

    def release_watermark(self) -> int | None:
        latest = [state.by_time[-1][0] for state in self.by_key.values()]
        return max(latest) + self.reach if latest else None

    def drop_all(self) -> None:
        for state in self.by_key.values():
            state.dead = True
        self.by_key.clear()
        self.heap.clear()

    def oldest_rs(self) -> Pos | None:
        return min((s.basis for s in self.by_key.values() if s.basis is not None), default=None)

    def state_size(self) -> tuple[int, int]:
        return len(self.by_key), sum(len(s.by_time) for s in self.by_key.values())
