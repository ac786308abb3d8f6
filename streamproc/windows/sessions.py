"""Session windows: per key, events closer than ``gap`` to each other form one window.

A session is ``[first, last + gap)`` over the event times it holds. An event at ``t`` joins every
session of its key with ``first - gap < t < last + gap``; joining two or more merges them (their
partial aggregates combine, the merged session is emitted if any part was). A session closes when
the watermark reaches ``last + gap``.

Deadlines live in one heap with lazy entries: extending an open session pushes nothing; when an
entry comes due, a session whose deadline moved on is pushed again. An entry is live only while
it is the session's latest (``KeySession.due``), so merged-away sessions and superseded entries are
skipped. Closed sessions of ``correction`` rules stay for ``gap`` ms after they close.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import insort
from collections.abc import Hashable, Iterator, Mapping
from operator import attrgetter, itemgetter
from typing import Any

from streamproc.records import Pos
from streamproc.windows.aggregates import TIME, State
from streamproc.windows.base import Evaluator, WindowResult

__all__ = ["KeySession", "SessionEngine"]

_BY_START = attrgetter("start")
_SORT_KEY = itemgetter(0)


class KeySession:
    """One session of one key: its span, partial aggregates and emit/close flags."""

    __slots__ = ("closed", "dead", "due", "emitted", "key", "rs", "start", "state")

    def __init__(self, key: Hashable, start: int, state: State, rs: Pos) -> None:
        self.key = key
        self.start = start
        self.state = state  # state[TIME] is the last event time
        self.rs = rs  # record-setter when its first event came: replay from here rebuilds it
        self.emitted = False  # a result was emitted for it or for a session merged into it
        self.closed = False
        self.dead = False  # merged into another session or freed
        self.due: int | None = None  # time of its live heap entry


class SessionEngine:
    """Session windows of one rule over one shard (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, gap: int, retention: int, early: bool) -> None:
        self.ev = evaluator
        self.aggs = evaluator.aggregates
        self.gap = gap
        self._retention = retention
        self.early = early
        # A key's one session, or its two or more sessions sorted by start: most keys have one,
        # and the fast path then reaches it without fetching a list from memory.
        self.by_key: dict[Hashable, KeySession | list[KeySession]] = {}
        self.heap: list[tuple[int, int, KeySession]] = []
        self._order = itertools.count()  # heap tie-breaker: sessions never compare

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
        gap = self.gap
        held = self.by_key.get(key)
        sessions = [] if held is None else [held] if isinstance(held, KeySession) else held
        joined = [s for s in sessions if s.start - gap < event_time < s.state[TIME] + gap]
        if not joined:
            session = KeySession(key, event_time, self.aggs.new_state(event_time), rs)
            session.closed = True  # "was closed": a new session has no open window yet
            insort(sessions, session, key=_BY_START)
        else:
            session = joined[0]  # the earliest: it keeps its identity
            for other in joined[1:]:
                self.aggs.merge(session.state, other.state)
                session.emitted = session.emitted or other.emitted
                session.rs = min(session.rs, other.rs)
                other.dead = True
                sessions.remove(other)
            if event_time < session.start:
                session.start = event_time
        self.by_key[key] = sessions[0] if len(sessions) == 1 else sessions
        self.aggs.add(session.state, doc, event_time, seq)
        end = session.state[TIME] + gap
        if watermark is not None and end <= watermark:  # only a late event gets here
            session.closed = True
            self.schedule(session, end + self._retention)
            self.emit_now(session, end, event_time, position, identity, True, out)
            return
        session.closed = False
        if session.due is None or end < session.due:  # _schedule, inline: rarely needed
            self.schedule(session, end)
        if self.early and not session.emitted:
            self.emit_now(session, end, event_time, position, identity, False, out)

    def emit_now(
        self,
        session: KeySession,
        end: int,
        event_time: int,
        position: Pos,
        identity: str | None,
        correction: bool,
        out: list[WindowResult],
    ) -> None:
        found = self.ev.values_for(session.key, session.state)
        if found is not None:
            output, values = found
            session.emitted = True
            out.append(
                self.ev.result(
                    output, session.start, end, values, event_time, position, identity, correction
                )
            )

    def schedule(self, session: KeySession, due: int) -> None:
        if session.due is None or due < session.due:
            session.due = due
            heapq.heappush(self.heap, (due, next(self._order), session))

    def close_until(self, watermark: int, trigger: Pos | None, out: list[WindowResult]) -> None:
        heap = self.heap
        if not heap or heap[0][0] > watermark:
            return
        gap, retention = self.gap, self._retention
        closing: list[tuple[tuple[int, str, int], WindowResult]] = []
        while heap and heap[0][0] <= watermark:
            due, _, session = heapq.heappop(heap)
            if session.dead or due != session.due:
                continue  # superseded entry
            session.due = None
            end = session.state[TIME] + gap
            if not session.closed:
                if end > watermark:
                    self.schedule(session, end)  # extended since the entry was pushed
                    continue
                session.closed = True
                if not self.early:
                    self._close(session, end, trigger, closing)
            if end + retention > watermark:
                self.schedule(session, end + retention)
                continue
            self._drop(session)
        closing.sort(key=_SORT_KEY)
        out.extend(result for _, result in closing)

    def _close(
        self,
        session: KeySession,
        end: int,
        trigger: Pos | None,
        closing: list[tuple[tuple[int, str, int], WindowResult]],
    ) -> None:
        found = self.ev.values_for(session.key, session.state)
        if found is None:
            return
        output, values = found
        result = self.ev.result(
            output,
            session.start,
            end,
            values,
            session.state[TIME],
            trigger,
            None,
            session.emitted,  # a reopened session revises what was emitted for it
        )
        session.emitted = True
        closing.append(((end, repr(output), session.start), result))

    def _drop(self, session: KeySession) -> None:
        session.dead = True
        key = session.key
        held = self.by_key[key]
        if isinstance(held, KeySession):  # the key's only session: this one
            del self.by_key[key]
            return
        held.remove(session)
        if len(held) == 1:
            self.by_key[key] = held[0]

    def _sessions(self) -> Iterator[KeySession]:
        for held in self.by_key.values():
            if isinstance(held, KeySession):
                yield held
            else:
                yield from held

    def release_watermark(self) -> int | None:
        ends = [s.state[TIME] for s in self._sessions()]
        return max(ends) + self.gap + self._retention if ends else None

    def drop_all(self) -> None:
        for session in self._sessions():
            session.dead = True
        self.by_key.clear()
        self.heap.clear()

    def oldest_rs(self) -> Pos | None:
        return min((s.rs for s in self._sessions()), default=None)

    def state_size(self) -> tuple[int, int]:
        return len(self.by_key), sum(1 for _ in self._sessions())
