"""Sliding windows: on every event at ``t``, the key's events in ``(t - range, t]``.

Per key the engine keeps the accepted events that a future window can still reach, sorted by
time (``bisect`` finds a window; in-order events append), in parallel lists: their times and,
for rules with other aggregates than ``COUNT(*)``, their (arrival, values). A count-only rule thus
stores one reference per event, to a time the records of its millisecond share.
An event's window holds the key's events that arrived so far with a time in its range, including
out-of-order ones.

Where a replay starts (``oldest_rs``) is found without a position per event. An event at or
after every earlier one is a *record setter*; the engine keeps *marks*: for each second of event
time, the first record setter it met in that second (a late event brings its record setter, the
latest one before it, if that second has none yet). Every held event has a record setter at or
before it (itself, if it is one), so the first mark of that setter's second, or of a later one,
comes no later than the event: replaying from the mark of the earliest such second rebuilds
every key. That is at most a second of event time earlier than the exact point. A key whose
events all set records has their times as setter times; once one does not (it came late), the
key also keeps (time, setter time) pairs in arrival order, whose head has the smallest setter
time (record setters' times only grow).

HAVING is edge-triggered per key: a result fires when HAVING holds after an event and did not
hold after the key's previous event; it re-arms once HAVING is false again. Items at or before
the horizon ``watermark - range - retention`` can never be in a window again and are dropped; a
key whose items are all gone is forgotten, so its next event starts afresh (previous: false).
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

from streamproc.records import Pos
from streamproc.windows.base import Evaluator, WindowResult

__all__ = ["MARK_MS", "SlidingEngine"]

MARK_MS = 1_000  # one mark (a replay point) per this much event time; see the module docstring

# A count-only rule's stand-in for (arrival, values): read nothing, never stored.
_NO_VALUES: tuple[int, tuple[Any, ...]] = (0, ())


class _KeyState(list[int]):
    """One key's items, in time order: the state is itself the list of their times (``state[i]``
    is the i-th item's time), and (unless the rule is count-only) ``rest[i]`` = (arrival
    sequence, extracted values) describes the same item.

    A list, not an ``array("q")`` of 64-bit integers as until 2026-12-07: an array's append,
    bisection and ``state[0]`` convert between int objects and C integers (an append parses a
    format string), ~1,000 instructions per event; the list saves 2.9% of the seed benchmark's
    instructions per record and 3.1% of the twenty rules' (callgrind, keys repeating). The cost
    is memory where events do not share a millisecond: each held time is then an int object of
    its own, ~47 bytes per held event against the array's ~12 (tracemalloc, one event per ms).
    Consecutive records of one millisecond share one (``parse_event_time`` returns the same
    object), as in the benchmark's data: there a key costs no more (420 bytes against 428).
    The state *is* the list, rather than holding one, to spare the hot path one object to fetch
    from memory per event (keys are many and cold)."""

    __slots__ = ("by_arrival", "dead", "due", "first", "previous", "rest")

    def __init__(self, keeps_values: bool) -> None:
        self.rest: list[tuple[int, tuple[Any, ...]]] | None = [] if keeps_values else None
        # The time of state[0] (None: no items), read where state[0] itself would cost a memory
        # miss: the fast path checks it on every event.
        self.first: int | None = None
        # (time, record-setter's time) in arrival order: only once an event was not a record
        # setter. Until then every item is its own record setter.
        self.by_arrival: deque[tuple[int, int]] | None = None
        self.previous = False  # HAVING held after the key's previous event
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
        # Marks (see the module docstring): the seconds (time // MARK_MS) in increasing order
        # and the first record setter met in each; next_mark is where the next second starts.
        self.mark_seconds: list[int] = []
        self.mark_positions: list[Pos] = []
        self.next_mark = -(2**63)
        self._mark_ms = MARK_MS  # (read here, so that tests can set a finer one)
        # Marks are trimmed (to those a held item can need) at close_until once there are more
        # than _marks_kept, which is then twice what is left: a trim costs O(keys), and the
        # items held can span more than the reach (lateness, keys not pruned since their last
        # event), so trims come at most once per as many new seconds as marks are left.
        self._marks_floor = max(64, 2 * (self.reach // self._mark_ms + 1))
        self._marks_kept = self._marks_floor

    def add(
        self,
        key: Hashable,
        doc: Mapping[str, Any],
        event_time: int,
        position: Pos,
        identity: str | None,
        seq: int,
        rs: Pos,
        rs_time: int,
        watermark: int | None,
        late: bool,
        out: list[WindowResult],
    ) -> None:
        if rs_time >= self.next_mark:
            self.mark(rs_time, rs)
        state = self.by_key.get(key)
        if state is None:
            state = self.by_key[key] = _KeyState(not self._aggs.count_star_only)
        elif watermark is not None:
            horizon = watermark - self.reach
            if state.first is not None and state.first <= horizon:
                self.prune(state, horizon)
        aggs = self._aggs
        times, rest = state, state.rest
        by_arrival = state.by_arrival
        # Read before anything changes: a value the aggregates refuse leaves the key unchanged.
        values = _NO_VALUES if rest is None else (seq, aggs.extract(doc))
        if by_arrival is None and event_time < rs_time:  # not a record setter
            # every item so far was its own record setter, and they arrived in time order
            by_arrival = state.by_arrival = deque(zip(times, times, strict=True))
        if by_arrival is not None:
            by_arrival.append((event_time, rs_time))
        if not times or times[-1] <= event_time:
            times.append(event_time)
            if rest is not None:
                rest.append(values)
            high = len(times)  # in order: every item is at or before this event
        else:
            # After every item of the same time: they arrived earlier.
            index = bisect_right(times, event_time)
            times.insert(index, event_time)
            if rest is not None:
                rest.insert(index, values)
            high = index + 1
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

    def mark(self, rs_time: int, rs: Pos) -> None:
        """Make the record setter ``rs`` the mark of its second: callers check that ``rs_time``
        is at or after ``next_mark``, so that second has none yet."""
        second = rs_time // self._mark_ms
        self.mark_seconds.append(second)
        self.mark_positions.append(rs)
        self.next_mark = (second + 1) * self._mark_ms

    def start_key(self, key: Hashable, event_time: int) -> _KeyState:
        """The state of a new key holding its first item, a record setter (the caller marks it):
        :meth:`add` for such an event in a count-only rule, as the operator's fast path uses it."""
        state = self.by_key[key] = _KeyState(False)
        state.append(event_time)
        state.first = event_time
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
        identity: str | None,
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
        identity: str | None,
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
        if len(self.mark_seconds) > self._marks_kept:
            self._trim_marks()
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
                if not self.by_key:
                    self._trim_marks()  # nothing held: every mark goes

    def release_watermark(self) -> int | None:
        latest = [state[-1] for state in self.by_key.values()]
        return max(latest) + self.reach if latest else None

    def drop_all(self) -> None:
        for state in self.by_key.values():
            state.dead = True
        self.by_key.clear()
        self.heap.clear()
        self._trim_marks()

    def _oldest_setter_time(self) -> int | None:
        """The smallest record-setter time of any held item (None: no item held)."""
        oldest: int | None = None
        for state in self.by_key.values():  # (a held key has an item)
            by_arrival = state.by_arrival
            held = by_arrival[0][1] if by_arrival else state[0]
            if oldest is None or held < oldest:
                oldest = held
        return oldest

    def _mark_index(self, setter_time: int) -> int:
        """Index of the first mark at or after the second of ``setter_time``."""
        return bisect_left(self.mark_seconds, setter_time // self._mark_ms)

    def _trim_marks(self) -> None:
        """Drop the marks no held item can need: those before the oldest one's second, or all
        of them once nothing is held (then the operator's latest record setter is where a
        replay starts, and the next item marks its second afresh, at or after it)."""
        oldest = self._oldest_setter_time()
        if oldest is None:
            self.mark_seconds.clear()
            self.mark_positions.clear()
            self.next_mark = -(2**63)
        elif (gone := self._mark_index(oldest)) > 0:
            del self.mark_seconds[:gone]
            del self.mark_positions[:gone]
        self._marks_kept = max(self._marks_floor, 2 * len(self.mark_seconds))

    def oldest_rs(self) -> Pos | None:
        oldest = self._oldest_setter_time()
        return None if oldest is None else self.mark_positions[self._mark_index(oldest)]

    def state_size(self) -> tuple[int, int]:
        return len(self.by_key), sum(map(len, self.by_key.values()))
