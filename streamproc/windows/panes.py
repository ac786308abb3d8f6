"""Tumble and Hop windows over per-key panes (a Tumble is a Hop whose slide is its size).

Time is cut into *panes* of ``slide`` ms aligned to the epoch; pane ``p`` covers
``[p, p + slide)``. The window ``[s, s + size)`` of a key is the combination of its panes
``s, s + slide, ..., s + size - slide``. An event updates one pane state in place (O(1));
results combine ``size / slide`` panes when they are needed.

Window ends are multiples of ``slide`` (*boundaries*). Closing to a watermark processes every
boundary up to it in order, jumping over stretches without panes. For ``final`` rules a key's
HAVING result is cached between boundaries (``_hot``): a key is re-evaluated only at a boundary
where one of its panes enters or leaves the window, or after a late event changed one of its
panes, so a quiet key costs nothing per boundary.

A pane lives until no window needs it: its last window ``[p, p + size)`` closed (for ``final``
Hop rules: the boundary where it leaves was processed), plus the correction retention.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Mapping
from operator import itemgetter
from typing import Any

from streamproc.records import Pos
from streamproc.windows.aggregates import TIME, State
from streamproc.windows.base import Evaluator, WindowResult

__all__ = ["PaneEngine"]

_SORT_KEY = itemgetter(0)
# a hot key: (sort text, key as output, selected values, greatest event time)
_Hot = tuple[str, tuple[Any, ...], dict[str, Any], int]


class _Pane:
    __slots__ = ("keys", "rs")

    def __init__(self, rs: Pos) -> None:
        self.keys: dict[Hashable, State] = {}
        self.rs = rs  # record-setter when the pane was created: replay from here rebuilds it


class PaneEngine:
    """Tumble/Hop windows of one rule over one shard (see the module docstring)."""

    def __init__(
        self, evaluator: Evaluator, slide: int, size: int, retention: int, early: bool
    ) -> None:
        self.ev = evaluator
        self.aggs = evaluator.aggregates
        self._add = self.aggs.add
        self._new_state = self.aggs.new_state
        self._keys = evaluator.keys
        self.slide = slide
        self.size = size
        self._retention = retention
        self.early = early
        # final Hop rules keep a pane until the boundary where it leaves (its keys' cached
        # results change there); Tumble windows share no pane, early rules cache nothing
        self.keep = retention if early or slide == size else max(slide, retention)
        self.panes: dict[int, _Pane] = {}  # by start
        self.starts: list[int] = []  # pane starts, ascending
        self.next_end: int | None = None  # smallest boundary not processed yet
        self.fired: dict[int, set[Hashable]] = {}  # early: window start -> keys that fired
        self._hot: dict[Hashable, _Hot] = {}  # final: keys whose current window passes HAVING
        self._stale: dict[Hashable, None] = {}  # final: keys whose open windows a late event hit

    # -- events ------------------------------------------------------------------------------

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
        start = event_time - event_time % self.slide
        pane = self.panes.get(start)
        if pane is None:
            pane = self.panes[start] = _Pane(rs)
            insort(self.starts, start)
        state = pane.keys.get(key)
        if state is None:
            state = pane.keys[key] = self._new_state(event_time)
        self._add(state, doc, event_time, seq)
        if self.early and not late:
            # Every window of an on-time event is open; if the key fired in all of them,
            # nothing can fire now: skip the evaluation (most events of an early rule).
            fired = self.fired
            window = start - self.size + self.slide
            while window <= start:
                keys = fired.get(window)
                if keys is None or key not in keys:
                    break
                window += self.slide
            else:
                return
        if self.early or late:
            self._event_results(key, start, event_time, position, identity, watermark, late, out)

    def _event_results(
        self,
        key: Hashable,
        pane_start: int,
        event_time: int,
        position: Pos,
        identity: str | None,
        watermark: int | None,
        late: bool,
        out: list[WindowResult],
    ) -> None:
        """Early results of the open windows and corrections of the closed windows the event
        is in, in window order. Windows with the same panes of this key share one evaluation."""
        slide, size = self.slide, self.size
        first = pane_start - size + slide
        last = pane_start + size  # the key's panes in [first, last) share a window with it
        near = self._states_of(key, first, last)
        starts = [start for start, _ in near]
        states = [state for _, state in near]
        output = self._keys.output(key)
        evaluated: tuple[int, int] | None = None
        values: dict[str, Any] | None = None
        if self.early and len(states) == 1:  # every window holds just this pane: one check
            values = self.ev.values(output, states[0])
            if values is None:
                return
            evaluated = (0, 1)
        for start in range(first, pane_start + slide, slide):
            end = start + size
            closed = watermark is not None and end <= watermark
            if not closed:
                if not self.early:
                    self._stale[key] = None  # a late event changed an open final window
                    continue
                fired = self.fired.get(start)
                if fired is not None and key in fired:
                    continue
            span = (bisect_left(starts, start), bisect_left(starts, end))
            if span != evaluated:
                evaluated = span
                values = self.ev.values(output, self.aggs.combine(states[span[0] : span[1]]))
            if values is None:
                continue
            if not closed:
                self.fired.setdefault(start, set()).add(key)
            out.append(
                self.ev.result(
                    output, start, end, dict(values), event_time, position, identity, closed
                )
            )

    def _states_of(self, key: Hashable, first: int, last: int) -> list[tuple[int, State]]:
        """(start, state) of ``key``'s panes starting in ``[first, last)``, in start order."""
        found = []
        panes = self.panes
        for start in range(first, last, self.slide):
            pane = panes.get(start)
            if pane is not None and (state := pane.keys.get(key)) is not None:
                found.append((start, state))
        return found

    # -- time --------------------------------------------------------------------------------

    def close_until(self, watermark: int, trigger: Pos | None, out: list[WindowResult]) -> None:
        """Process every boundary up to ``watermark``: final results, then free panes."""
        slide, size = self.slide, self.size
        limit = watermark - watermark % slide + slide  # the first boundary after the watermark
        end = self.next_end
        if end is None:
            end = limit  # first call: every window holding an event ends after the watermark
        if end > watermark:
            self.next_end = end
            if self.starts and self.starts[0] + size + self.keep <= watermark:
                self._free(watermark)
            return
        starts = self.starts
        while end <= watermark:
            index = bisect_left(starts, end - size - slide)
            if index == len(starts):
                end = limit
                break
            if starts[index] >= end:  # no pane in or just leaving this window: jump
                end = min(starts[index] + slide, limit)
                continue
            self._close_boundary(end, trigger, out)
            end += slide
        self.next_end = end
        self._free(watermark)

    def _close_boundary(self, end: int, trigger: Pos | None, out: list[WindowResult]) -> None:
        slide, size = self.slide, self.size
        start = end - size
        self.fired.pop(start, None)
        if self.early:
            return
        get = self.panes.get
        hot = self._hot
        changed: dict[Hashable, Any] = {}  # keys to evaluate again (values unused)
        entering = get(end - slide)
        if entering is not None:
            changed = entering.keys.copy()
        if size == slide:
            hot.clear()  # tumbling windows share no pane: only the entering keys can hold
        elif (leaving := get(start - slide)) is not None:
            changed.update(leaving.keys)
        if self._stale:
            changed.update(self._stale)
            self._stale = {}
        aggs, ev = self.aggs, self.ev
        for key in changed:
            states = [state for _, state in self._states_of(key, start, end)]
            if not states:
                hot.pop(key, None)
                continue
            combined = states[0] if len(states) == 1 else aggs.combine(states)
            found = ev.values_for(key, combined)
            if found is None:
                hot.pop(key, None)
            else:
                output, values = found
                hot[key] = (repr(output), output, values, combined[TIME])
        if not hot:
            return
        for _, output, values, event_time in sorted(hot.values(), key=_SORT_KEY):
            out.append(ev.result(output, start, end, dict(values), event_time, trigger, None))

    def _free(self, watermark: int) -> None:
        starts, horizon = self.starts, watermark - self.size - self.keep
        count = 0
        while count < len(starts) and starts[count] <= horizon:
            del self.panes[starts[count]]
            count += 1
        del starts[:count]
        if self.fired:
            for start in [s for s in self.fired if s + self.size <= watermark]:
                del self.fired[start]

    # -- bookkeeping -------------------------------------------------------------------------

    def release_watermark(self) -> int | None:
        if not self.starts:
            return None
        return self.starts[-1] + self.size + self._retention

    def drop_all(self) -> None:
        self.panes.clear()
        self.starts.clear()
        self.fired.clear()
        self._hot.clear()
        self._stale.clear()

    def oldest_rs(self) -> Pos | None:
        return min((pane.rs for pane in self.panes.values()), default=None)

    def state_size(self) -> tuple[int, int]:
        panes = self.panes.values()
        items = sum(len(pane.keys) for pane in panes)
        if len(panes) == 1 or not items:  # (the usual Tumble: no key in two panes)
            return items, items
        keys: set[Hashable] = set()
        for pane in panes:
            keys.update(pane.keys)
        return len(keys), items
