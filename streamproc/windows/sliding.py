"""Sliding windows: on every event at ``t``, the key's events in ``(t - range, t]``.

Per key the engine keeps the accepted events that a future window can still reach, sorted by
time (``bisect`` finds a window; in-order events append), in parallel arrays: their times (as
64-bit integers), their record-setters and, for rules with other aggregates than ``COUNT(*)``,
their (arrival, values). A count-only rule thus stores no object per event: 8 bytes of time and
a reference to the position the event came with. Once an event of the key arrives out of order,
(time, record-setter) pairs are also kept in arrival order, whose head gives the oldest position
to replay from (until then the time order is the arrival order).
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
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

from streamproc.records import Pos
from streamproc.windows.base import Evaluator, WindowResult

__all__ = ["SlidingEngine"]

# A count-only rule's stand-in for (arrival, values): read nothing, never stored.
_NO_VALUES: tuple[int, tuple[Any, ...]] = (0, ())


if TYPE_CHECKING:
    _Times = array[int]
else:
    _Times = array


class _KeyState(_Times):
    """One key's items, in time order: the state is itself the array of their times (``state[i]``
    is the i-th item's time), and ``setters[i]`` and (unless the rule is count-only) ``rest[i]``
    = (arrival sequence, extracted values) describe the same item.

    The times are 64-bit integers, not int objects: nothing per event for the collector to visit
    or to free when the key goes. Event times fit: the operator takes the years 1 to 9999 only.
    The state *is* the array, rather than holding one, to spare the hot path one object to fetch
    from memory per event (keys are many and cold)."""

    __slots__ = (
        "basis",
        "by_arrival",
        "dead",
        "due",
        "first",
        "previous",
        "rest",
        "setters",
    )

    def __new__(cls, keeps_values: bool) -> _KeyState:
        # (typeshed gives array.__new__ the result array[int], whatever the class)
        return super().__new__(cls, "q")  # type: ignore[return-value]

    def __init__(self, keeps_values: bool) -> None:
        self.setters: list[Pos] = []
        self.rest: list[tuple[int, tuple[Any, ...]]] | None = [] if keeps_values else None
        # The time of state[0] (None: no items), read where state[0] itself would cost a memory
        # miss: the fast path checks it on every event.
        self.first: int | None = None
        # (time, record-setter) in arrival order: only after an out-of-order event.
        self.by_arrival: deque[tuple[int, Pos]] | None = None
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
            state = self.by_key[key] = _KeyState(not self._aggs.count_star_only)
        elif watermark is not None:
            horizon = watermark - self.reach
            if state.first is not None and state.first <= horizon:
                self.prune(state, horizon)
        aggs = self._aggs
        times, setters, rest = state, state.setters, state.rest
        by_arrival = state.by_arrival
        # Read before anything changes: a value the aggregates refuse leaves the key unchanged.
        values = _NO_VALUES if rest is None else (seq, aggs.extract(doc))
        if not times or times[-1] <= event_time:
            times.append(event_time)
            setters.append(rs)
            if rest is not None:
                rest.append(values)
            if by_arrival is not None:
                by_arrival.append((event_time, rs))
            high = len(times)  # in order: every item is at or before this event
        else:
            if by_arrival is None:  # the time order so far is the arrival order
                by_arrival = state.by_arrival = deque(zip(times, setters, strict=True))
            by_arrival.append((event_time, rs))
            # After every item of the same time: they arrived earlier.
            index = bisect_right(times, event_time)
            times.insert(index, event_time)
            setters.insert(index, rs)
            if rest is not None:
                rest.insert(index, values)
            high = index + 1
        state.basis = setters[0] if by_arrival is None else by_arrival[0][1]
        state.first = times[0]
        due = times[-1] + self.reach
        if state.due is None or due < state.due:
            state.due = due
            heapq.heappush(self.heap, (due, next(self._order), key, state))
        count = high - bisect_right(times, event_time - self.range_ms)
        if rest is None:
            # HAVING over counts alone is decided by the count: cached per count when it does
            # not read the key either (the usual "HAVING COUNT(*) > 5").
            cached = None if self.holds_by_count is None else self.holds_by_count.get(count)
            holds = self.count_holds(key, event_time, count) if cached is None else cached
            if holds and not state.previous:
                self.fire_count(key, event_time, count, position, identity, late, out)
        else:
            window = aggs.new_state(event_time)
            for index in range(high - count, high):
                item_seq, item_values = rest[index]
                aggs.add_values(window, item_values, times[index], item_seq)
            output = self._keys.output(key)
            values_now = self._ev.values(output, window)
            holds = values_now is not None
            if values_now is not None and not state.previous:
                out.append(self._result(output, event_time, values_now, position, identity, late))
        state.previous = holds

    def start_key(self, key: Hashable, event_time: int, rs: Pos) -> _KeyState:
        """The state of a new key holding its first (in-order) item: :meth:`add` for an event
        of an unknown key in a count-only rule, as the operator's fast path uses it."""
        state = self.by_key[key] = _KeyState(False)
        state.append(event_time)
        state.setters.append(rs)
        state.first = event_time
        state.basis = rs
        state.due = due = event_time + self.reach
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
    def prune(state: _KeyState, horizon: int) -> None:
        """Drop the items at or before ``horizon`` (the caller saw that the first one is), and
        set ``first`` again once the caller has added its event."""
        gone = bisect_right(state, horizon)
        del state[:gone]
        del state.setters[:gone]
        if state.rest is not None:
            del state.rest[:gone]
        if not state:
            state.previous = False  # nothing within reach: the key starts afresh
        # The arrival order's head only: an item behind a later one stays until it is the head
        # (a replay then starts earlier than it must, never later).
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
            latest = state[-1] + self.reach
            if latest > watermark:
                self._schedule(key, state, latest)
            else:
                state.dead = True
                del self.by_key[key]

    def release_watermark(self) -> int | None:
        latest = [state[-1] for state in self.by_key.values()]
        return max(latest) + self.reach if latest else None

    def drop_all(self) -> None:
        for state in self.by_key.values():
            state.dead = True
        self.by_key.clear()
        self.heap.clear()

    def oldest_rs(self) -> Pos | None:
        return min((s.basis for s in self.by_key.values() if s.basis is not None), default=None)

    def state_size(self) -> tuple[int, int]:
        return len(self.by_key), sum(map(len, self.by_key.values()))
