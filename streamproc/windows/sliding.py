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

from streamproc.records import Position
from streamproc.windows.base import Evaluator, WindowResult

__all__ = ["SlidingEngine"]

_Item = tuple[int, int, Position, tuple[Any, ...]]  # time, arrival sequence, record-setter, values
_TIME = itemgetter(0)


class _KeyState:
    __slots__ = ("basis", "by_arrival", "by_time", "dead", "due", "previous")

    def __init__(self) -> None:
        self.by_time: list[_Item] = []
        self.by_arrival: deque[_Item] | None = None  # only after an out-of-order event
        self.previous = False  # HAVING held after the key's previous event
        self.basis: Position | None = None  # where a replay rebuilds ``previous`` and the items
        self.dead = False
        self.due: int | None = None


class SlidingEngine:
    """Sliding windows of one rule over one shard (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, range_ms: int, retention: int) -> None:
        self._ev = evaluator
        self._aggs = evaluator.aggregates
        self._keys = evaluator.keys
        self._range = range_ms
        self._retention = retention
        self._reach = range_ms + retention  # an item is needed until watermark - reach passes it
        self._by_key: dict[Hashable, _KeyState] = {}
        self._heap: list[tuple[int, int, Hashable, _KeyState]] = []
        self._order = itertools.count()

    def add(
        self,
        key: Hashable,
        doc: Mapping[str, Any],
        event_time: int,
        position: Position,
        identity: str,
        seq: int,
        rs: Position,
        watermark: int | None,
        late: bool,
        out: list[WindowResult],
    ) -> None:
        state = self._by_key.get(key)
        if state is None:
            state = self._by_key[key] = _KeyState()
        elif watermark is not None:
            self._prune(state, watermark - self._reach)
            if not state.by_time:
                state.previous = False  # nothing within reach: the key starts afresh
        item = (event_time, seq, rs, self._aggs.extract(doc))
        by_time = state.by_time
        by_arrival = state.by_arrival
        if not by_time or by_time[-1][0] <= event_time:
            by_time.append(item)
            if by_arrival is not None:
                by_arrival.append(item)
        else:
            if by_arrival is None:
                by_arrival = state.by_arrival = deque(by_time)  # arrival order so far
            by_arrival.append(item)
            insort(by_time, item)
        state.basis = (by_time if by_arrival is None else by_arrival)[0][2]
        self._schedule(key, state, by_time[-1][0] + self._reach)

        low = bisect_right(by_time, event_time - self._range, key=_TIME)
        high = bisect_right(by_time, event_time, key=_TIME)
        aggs = self._aggs
        window = aggs.new_state(event_time)
        if aggs.count_star_only:
            for slot in range(1, len(window)):
                window[slot] = high - low
        else:
            for item_time, item_seq, _, values in by_time[low:high]:
                aggs.add_values(window, values, item_time, item_seq)
        output = self._keys.output(key)
        values_now = self._ev.values(output, window)
        holds = values_now is not None
        if holds and not state.previous:
            out.append(
                self._ev.result(
                    output,
                    event_time - self._range + 1,
                    event_time + 1,
                    values_now,  # type: ignore[arg-type]  # holds: not None
                    event_time,
                    position,
                    identity,
                    late,
                )
            )
        state.previous = holds

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
            heapq.heappush(self._heap, (due, next(self._order), key, state))

    def close_until(
        self, watermark: int, trigger: Position | None, out: list[WindowResult]
    ) -> None:
        """Forget keys whose every item is beyond reach (sliding results fire on events only)."""
        heap = self._heap
        while heap and heap[0][0] <= watermark:
            due, _, key, state = heapq.heappop(heap)
            if state.dead or due != state.due:
                continue
            state.due = None
            latest = state.by_time[-1][0] + self._reach
            if latest > watermark:
                self._schedule(key, state, latest)
            else:
                state.dead = True
                del self._by_key[key]

    def release_watermark(self) -> int | None:
        latest = [state.by_time[-1][0] for state in self._by_key.values()]
        return max(latest) + self._reach if latest else None

    def drop_all(self) -> None:
        for state in self._by_key.values():
            state.dead = True
        self._by_key.clear()
        self._heap.clear()

    def oldest_rs(self) -> Position | None:
        return min((s.basis for s in self._by_key.values() if s.basis is not None), default=None)

    def state_size(self) -> tuple[int, int]:
        return len(self._by_key), sum(len(s.by_time) for s in self._by_key.values())
