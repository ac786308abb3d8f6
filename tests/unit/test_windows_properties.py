"""Property tests of the window engine against a brute-force reference written plainly here.

The reference keeps every accepted event forever and recomputes each window from scratch by
scanning them: it shares no code with the engine. Streams have event-time jitter wider than
window size + allowed lateness, so late events, corrections and LateEvent all happen.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streamproc.records import Position, Record
from streamproc.windows import LateEvent, WindowOperator, WindowResult, sliding
from streamproc.windowspec import (
    Aggregate,
    Hop,
    Session,
    Sliding,
    Tumble,
    WindowKind,
    WindowRule,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Sliding replay points are kept per second of event time (``MARK_MS``); these streams span a
# few hundred ms. Marks of 3 ms make replays start at many different points; marks of 40 ms are
# wider than every range here (as a second is wider than a 500 ms window), so every event of a
# mark can be gone while a late one with a time in it arrives. The module runs with 3 ms; the
# replay-point tests also run with 40 ms.
MARK_WIDTHS = [3, 40]


@pytest.fixture(scope="module", autouse=True)
def fine_sliding_marks() -> Iterator[None]:
    with marks(MARK_WIDTHS[0]):
        yield


@contextlib.contextmanager
def marks(width: int) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sliding, "MARK_MS", width)
        yield


AGGREGATES = (
    Aggregate("count", None, "COUNT(*)", "n"),
    Aggregate("sum", "amount", "SUM(amount)", "total"),
    Aggregate("min", "amount", "MIN(amount)", "lo"),
    Aggregate("max", "amount", "MAX(amount)", "hi"),
    Aggregate("avg", "amount", "AVG(amount)", "mean"),
    Aggregate("count_distinct", "merchant", "COUNT(DISTINCT merchant)", "merchants"),
    Aggregate("count", "amount", "COUNT(amount)", "amounts"),
)
SELECT = ("card", "n", "total", "lo", "hi", "mean", "merchants", "amounts")
# Count-only rules: sliding ones whose HAVING reads only the count take the operator's fast path.
COUNT_ONLY = (Aggregate("count", None, "COUNT(*)", "n"),)
SELECT_COUNT = ("card", "n")
MISSING = object()  # a field left out of the record


def having_n_at_least(threshold: int) -> Callable[[Mapping[str, Any]], bool]:
    return lambda scope: scope["COUNT(*)"] >= threshold and scope["n"] >= threshold


def having_total_over(limit: int) -> Callable[[Mapping[str, Any]], bool]:
    return lambda scope: scope["total"] is not None and scope["SUM(amount)"] > limit


HAVINGS: dict[str, Callable[[Mapping[str, Any]], bool] | None] = {
    "none": None,
    "n>=2": having_n_at_least(2),
    "n>=3": having_n_at_least(3),
    "total>8": having_total_over(8),
}
HAVING_READS = {
    "n>=2": frozenset({"COUNT(*)", "n"}),
    "n>=3": frozenset({"COUNT(*)", "n"}),
    "total>8": frozenset({"total", "SUM(amount)"}),
}


def keep_only(doc: Mapping[str, Any]) -> bool:
    return bool(doc["keep"])


@dataclass(frozen=True)
class Case:
    window: WindowKind
    emit: str
    late: str
    lateness: int
    having: str
    filtered: bool
    counts_only: bool = False

    @property
    def having_name(self) -> str:
        return "n>=2" if self.counts_only and self.having == "total>8" else self.having

    def rule(self) -> WindowRule:
        return WindowRule(
            name="prop",
            version=1,
            window=self.window,
            group_by=("card",),
            aggregates=COUNT_ONLY if self.counts_only else AGGREGATES,
            select=SELECT_COUNT if self.counts_only else SELECT,
            having=HAVINGS[self.having_name],
            having_reads=HAVING_READS.get(self.having_name),
            where=keep_only if self.filtered else None,
            time_field="t",
            emit=self.emit,  # type: ignore[arg-type]
            allowed_lateness_ms=self.lateness,
            late=self.late,  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------------------- the reference


class RefLate(Exception):
    pass


@dataclass(frozen=True)
class Ev:
    arrival: int
    key: str
    time: int
    doc: Mapping[str, Any]
    position: Position
    identity: str


Row = tuple[Any, ...]  # (key, start, end, values, event_time, trigger, identity, correction)


def is_number(value: Any) -> bool:
    return type(value) in (int, float)


def canonical(value: Any) -> Any:
    if type(value) in (str, int, float):
        return value
    return json.dumps(value, sort_keys=True)


def brute_values(case: Case, key: str, events: list[Ev]) -> dict[str, Any] | None:
    """Aggregates of a window by brute force; None when HAVING fails."""
    events = sorted(events, key=lambda e: e.arrival)
    amounts: list[Any] = [e.doc.get("amount") for e in events]
    numbers = [a for a in amounts if is_number(a)]
    family = next((type(a) is str for a in amounts if is_number(a) or type(a) is str), None)
    same = [a for a in amounts if (type(a) is str if family else is_number(a))]
    merchants = {canonical(e.doc["merchant"]) for e in events if e.doc.get("merchant") is not None}
    total: Any = sum(numbers) if numbers else None
    scope = {
        "card": key,
        "n": len(events),
        "total": total,
        "lo": min(same) if family is not None else None,
        "hi": max(same) if family is not None else None,
        "mean": total / len(numbers) if numbers else None,
        "merchants": len(merchants),
        "amounts": sum(1 for a in amounts if a is not None),
    }
    for aggregate in AGGREGATES:
        scope[aggregate.name] = scope[aggregate.alias]
    having = HAVINGS[case.having_name]
    if having is not None and not having(scope):
        return None
    return {column: scope[column] for column in (SELECT_COUNT if case.counts_only else SELECT)}


class Reference:
    """The engine's documented semantics, recomputed from all accepted events each time."""

    def __init__(self, case: Case) -> None:
        self.case = case
        window = case.window
        self.retention = 0
        if case.late == "correction":
            self.retention = {
                Tumble: lambda w: w.size_ms,
                Hop: lambda w: w.size_ms,
                Session: lambda w: w.gap_ms,
                Sliding: lambda w: w.range_ms,
            }[type(window)](window)
        self.watermark: int | None = None
        self.max_time: int | None = None
        self.accepted: list[Ev] = []
        self.emitted_windows: set[tuple[str, int]] = set()
        self.emitted_sessions: list[frozenset[int]] = []
        self.after_previous: dict[str, bool] = {}

    # windows --------------------------------------------------------------------------------

    def fixed_size(self) -> tuple[int, int]:
        window = self.case.window
        if isinstance(window, Tumble):
            return window.size_ms, window.size_ms
        assert isinstance(window, Hop)
        return window.slide_ms, window.size_ms

    def starts_of(self, time: int) -> list[int]:
        slide, size = self.fixed_size()
        start = (time // slide) * slide
        return [s for s in range(start - size + slide, start + 1, slide)]

    def sessions_of(self, key: str) -> list[list[Ev]]:
        gap = self.case.window.gap_ms  # type: ignore[union-attr]
        events = sorted((e for e in self.accepted if e.key == key), key=lambda e: e.time)
        groups: list[list[Ev]] = []
        for event in events:
            if groups and event.time - groups[-1][-1].time < gap:
                groups[-1].append(event)
            else:
                groups.append([event])
        return groups

    def session_bounds(self, group: list[Ev]) -> tuple[int, int]:
        gap = self.case.window.gap_ms  # type: ignore[union-attr]
        return min(e.time for e in group), max(e.time for e in group) + gap

    def emitted_session(self, group: list[Ev]) -> bool:
        members = frozenset(e.arrival for e in group)
        return any(done <= members for done in self.emitted_sessions)

    def all_windows(self) -> list[tuple[str, int, int, list[Ev]]]:
        """(key, start, end, events) of every window holding an accepted event."""
        if isinstance(self.case.window, Sliding):
            return []
        found = []
        if isinstance(self.case.window, Session):
            for key in sorted({e.key for e in self.accepted}):
                for group in self.sessions_of(key):
                    found.append((key, *self.session_bounds(group), group))
            return found
        _, size = self.fixed_size()
        pairs = {(e.key, s) for e in self.accepted for s in self.starts_of(e.time)}
        for key, start in sorted(pairs):
            events = [e for e in self.accepted if e.key == key and start <= e.time < start + size]
            found.append((key, start, start + size, events))
        return found

    def release(self) -> int | None:
        """The watermark at which nothing can change any more (where flush moves to)."""
        if not self.accepted:
            return None
        window = self.case.window
        if isinstance(window, Sliding):
            return max(e.time for e in self.accepted) + window.range_ms + self.retention
        return max(end for _, _, end, _ in self.all_windows()) + self.retention

    # operations -----------------------------------------------------------------------------

    def close(self, old: int | None, new: int, trigger: Position | None) -> list[Row]:
        if self.case.emit == "early" or isinstance(self.case.window, Sliding):
            return []
        rows = []
        for key, start, end, events in self.all_windows():
            if (old is None or end > old) and end <= new:
                values = brute_values(self.case, key, events)
                if values is None:
                    continue
                correction = False
                if isinstance(self.case.window, Session):
                    correction = self.emitted_session(events)
                    self.emitted_sessions.append(frozenset(e.arrival for e in events))
                event_time = max(e.time for e in events)
                rows.append(((key,), start, end, values, event_time, trigger, None, correction))
        rows.sort(key=lambda row: (row[2], repr(row[0]), row[1]))
        return rows

    def on_event(
        self, doc: Mapping[str, Any], time: int, position: Position, ident: str
    ) -> list[Row]:
        if self.case.filtered and not doc["keep"]:
            if self.max_time is None or time >= self.max_time:
                self.max_time = time
            return self.move(position)
        before = self.watermark
        late = before is not None and time < before
        if late and time < before - self.retention:  # type: ignore[operator]
            raise RefLate
        event = Ev(len(self.accepted), doc["card"], time, doc, position, ident)
        rows = self.own_rows(event, before, late)
        if self.max_time is None or time >= self.max_time:
            self.max_time = time
        return rows + self.move(position)

    def move(self, trigger: Position) -> list[Row]:
        assert self.max_time is not None
        new = self.max_time - self.case.lateness
        if self.watermark is not None and new <= self.watermark:
            return []
        old, self.watermark = self.watermark, new
        return self.close(old, new, trigger)

    def own_rows(self, event: Ev, before: int | None, late: bool) -> list[Row]:
        case, key, time = self.case, event.key, event.time
        previous = [e for e in self.accepted if e.key == key]
        self.accepted.append(event)
        rows: list[Row] = []

        def row(start: int, end: int, values: dict[str, Any], correction: bool) -> None:
            rows.append(
                ((key,), start, end, values, time, event.position, event.identity, correction)
            )

        window = case.window
        if isinstance(window, Sliding):
            horizon = None if before is None else before - window.range_ms - self.retention
            recent = [e for e in previous if horizon is None or e.time > horizon]
            held_before = self.after_previous.get(key, False) if recent else False
            inside = [
                e for e in self.accepted if e.key == key and time - window.range_ms < e.time <= time
            ]
            values = brute_values(case, key, inside)
            if values is not None and not held_before:
                row(time - window.range_ms + 1, time + 1, values, late)
            self.after_previous[key] = values is not None
            return rows
        if isinstance(window, Session):
            group = next(g for g in self.sessions_of(key) if event in g)
            start, end = self.session_bounds(group)
            members = frozenset(e.arrival for e in group)
            if before is not None and end <= before:
                values = brute_values(case, key, group)
                if values is not None:
                    row(start, end, values, True)
                    self.emitted_sessions.append(members)
            elif case.emit == "early" and not self.emitted_session(group):
                values = brute_values(case, key, group)
                if values is not None:
                    row(start, end, values, False)
                    self.emitted_sessions.append(members)
            return rows
        _, size = self.fixed_size()
        for start in self.starts_of(time):
            end = start + size
            events = [e for e in self.accepted if e.key == key and start <= e.time < end]
            if before is not None and end <= before:
                values = brute_values(case, key, events)
                if values is not None:
                    row(start, end, values, True)
            elif case.emit == "early" and (key, start) not in self.emitted_windows:
                values = brute_values(case, key, events)
                if values is not None:
                    row(start, end, values, False)
                    self.emitted_windows.add((key, start))
        return rows

    def advance_to(self, watermark: int) -> list[Row]:
        if self.watermark is not None and watermark <= self.watermark:
            return []
        old, self.watermark = self.watermark, watermark
        return self.close(old, watermark, None)

    def flush(self) -> list[Row]:
        release = self.release()
        if release is None or (self.watermark is not None and release <= self.watermark):
            return []
        return self.advance_to(release)


# ---------------------------------------------------------------------------- helpers

Event = tuple[dict[str, Any], int]  # (record, event time)
Outcome = list[Row] | str  # rows, or "late"


def rows(results: list[WindowResult]) -> list[Row]:
    return [
        (
            r.key,
            r.window_start_ms,
            r.window_end_ms,
            r.values,
            r.event_time_ms,
            r.trigger,
            r.trigger_identity,
            r.correction,
        )
        for r in results
    ]


def run_engine(operator: WindowOperator, events: list[Event], first: int = 0) -> list[Outcome]:
    outcomes: list[Outcome] = []
    handle = operator.handler()  # the entry point the processor uses (a fast path for some rules)
    for index, (doc, time) in enumerate(events, start=first):
        try:
            found = handle(doc, time, at(index + 1), f"e{index}")
        except LateEvent as late:
            assert late.reason.startswith("late event: event time ")
            outcomes.append("late")
        else:
            outcomes.append(rows(found))
    return outcomes


def run_reference_events(reference: Reference, events: list[Event]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for index, (doc, time) in enumerate(events):
        try:
            outcomes.append(reference.on_event(doc, time, Position(index + 1), f"e{index}"))
        except RefLate:
            outcomes.append("late")
    return outcomes


KINDS: dict[str, list[WindowKind]] = {
    "tumble": [Tumble(10), Tumble(3)],
    "hop": [Hop(5, 15), Hop(4, 4), Hop(3, 12)],
    "session": [Session(6), Session(2), Session(12)],
    "sliding": [Sliding(12), Sliding(3)],
}
ALL_KINDS = sorted(KINDS)


def cases(kind: str | None = None) -> st.SearchStrategy[Case]:
    windows = [w for k in ([kind] if kind else ALL_KINDS) for w in KINDS[k]]
    return st.builds(
        Case,
        window=st.sampled_from(windows),
        emit=st.sampled_from(["final", "early"]),
        late=st.sampled_from(["dead_letter", "correction"]),
        lateness=st.sampled_from([0, 3, 7]),
        having=st.sampled_from(sorted(HAVINGS)),
        filtered=st.booleans(),
        counts_only=st.booleans(),
    )


CASES = st.builds(
    Case,
    window=st.sampled_from([w for k in ALL_KINDS for w in KINDS[k]]),
    emit=st.sampled_from(["final", "early"]),
    late=st.sampled_from(["dead_letter", "correction"]),
    lateness=st.sampled_from([0, 3, 7]),
    having=st.sampled_from(sorted(HAVINGS)),
    filtered=st.booleans(),
    counts_only=st.booleans(),
)
AMOUNTS = st.one_of(
    st.just(MISSING),
    st.none(),
    st.integers(-5, 20),
    st.integers(-10, 40).map(lambda n: n / 2),
    st.sampled_from(["x", "y", "z"]),
    st.booleans(),
)
MERCHANTS = st.one_of(
    st.just(MISSING), st.sampled_from(["m1", "m2", "m3", 1, 1.0, True, None, [1], {"a": 1}])
)


@st.composite
def streams(draw: st.DrawFn, max_size: int = 45) -> list[Event]:
    """Records with times that mostly increase, half of them jittered by up to ±4, ±10 or ±25 ms
    (wider than any window + lateness here), so some are late or corrections; some streams
    start before the epoch (negative times)."""
    count = draw(st.integers(0, max_size))
    step = draw(st.sampled_from([1, 2, 3]))
    base = draw(st.sampled_from([0, -40, 1_000]))
    cards = draw(st.sampled_from([["a"], ["a", "b"], ["a", "b", "c"]]))
    spread = draw(st.sampled_from([4, 10, 25]))  # 25 > every window size + lateness here
    events: list[Event] = []
    for index in range(count):
        doc: dict[str, Any] = {"card": draw(st.sampled_from(cards))}
        amount = draw(AMOUNTS)
        if amount is not MISSING:
            doc["amount"] = amount
        merchant = draw(MERCHANTS)
        if merchant is not MISSING:
            doc["merchant"] = merchant
        doc["keep"] = draw(st.sampled_from([True, True, True, False]))
        jitter = draw(st.integers(-spread, spread)) if draw(st.booleans()) else 0
        events.append((doc, base + index * step + jitter))
    return events


# ---------------------------------------------------------------------------- the properties


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_matches_the_brute_force_reference(kind: str) -> None:
    """Every window kind, both emit modes, both late policies, with and without WHERE."""
    check_against_reference(kind)


def check_against_reference(kind: str) -> None:
    @SETTINGS
    @given(case=cases(kind), events=streams())
    def check(case: Case, events: list[Event]) -> None:
        against_reference(case, events)

    check()


def against_reference(case: Case, events: list[Event]) -> None:
    operator, reference = WindowOperator(case.rule()), Reference(case)
    assert run_engine(operator, events) == run_reference_events(reference, events)
    if events and events[0][1] % 2:  # half the streams go idle first: expiry without flush
        far = max(time for _, time in events) + 100  # past every window + retention here
        assert rows(operator.advance_to(far)) == reference.advance_to(far)
        assert operator.state_size() == (0, 0)  # everything expired was freed
    assert rows(operator.flush()) == reference.flush()
    assert operator.state_size() == (0, 0)


@SETTINGS
@given(case=CASES, events=streams())
def test_same_stream_same_results(case: Case, events: list[Event]) -> None:
    first, second = WindowOperator(case.rule()), WindowOperator(case.rule())
    once = [*run_engine(first, events), rows(first.flush())]
    again = [*run_engine(second, events), rows(second.flush())]
    assert repr(once) == repr(again)


@pytest.mark.parametrize(
    ("kind", "width"),
    [(kind, MARK_WIDTHS[0]) for kind in ALL_KINDS]
    + [("sliding", width) for width in MARK_WIDTHS[1:]],
)
def test_restart_by_replay_from_oldest_position(kind: str, width: int) -> None:
    @SETTINGS
    @given(case=cases(kind), events=streams(), data=st.data())
    def check(case: Case, events: list[Event], data: st.DataObject) -> None:
        restart_by_replay(case, events, data)

    with marks(width):
        check()


def restart_by_replay(case: Case, events: list[Event], data: st.DataObject) -> None:
    """Stop after record ``split``, replay from oldest_position() into a fresh operator
    (results dropped, as the runtime does), go on: the same results as one uninterrupted run."""
    split = data.draw(st.integers(0, len(events)), label="split")  # records [0, split) done
    whole = WindowOperator(case.rule())
    expected = [*run_engine(whole, events), rows(whole.flush())]

    before = WindowOperator(case.rule())
    run_engine(before, events[:split])
    start = before.oldest_position()
    size_before = before.state_size()
    replayed = WindowOperator(case.rule())
    first = split if start is None else start[0] - 1
    assert 0 <= first <= split
    replay = run_engine(replayed, events[first:split], first=first)  # results: discarded
    # the replay judges every record late or not as the first run did (same watermark)
    assert [o == "late" for o in replay] == [o == "late" for o in expected[first:split]]
    assert replayed.state_size() == size_before
    assert replayed.watermark_ms == before.watermark_ms
    rest = [*run_engine(replayed, events[split:], first=split), rows(replayed.flush())]
    assert rest == expected[split:]


@pytest.mark.parametrize("width", MARK_WIDTHS)
def test_oldest_position_only_moves_forward_and_bounds_held_state(width: int) -> None:
    with marks(width):
        oldest_position_only_moves_forward_and_bounds_held_state()


@SETTINGS
@given(case=CASES, events=streams())
def oldest_position_only_moves_forward_and_bounds_held_state(
    case: Case, events: list[Event]
) -> None:
    operator = WindowOperator(case.rule())
    last: Position | None = None
    handle = operator.handler()
    for index, (doc, time) in enumerate(events):
        with contextlib.suppress(LateEvent):
            handle(doc, time, at(index + 1), "")
        oldest = operator.oldest_position()
        if oldest is not None:
            assert oldest <= Position(index + 1)
            assert last is None or oldest >= last
            last = oldest


# ---------------------------------------------------------------------------- stateful


class OperatorMachine(RuleBasedStateMachine):
    """Events, idle deadlines (advance_to) and flushes interleaved: every call's results equal
    the reference's for the same call."""

    def __init__(self) -> None:
        super().__init__()
        self.index = 0
        self.time = 0

    @initialize(case=CASES)
    def start(self, case: Case) -> None:
        self.case = case
        self.operator = WindowOperator(case.rule())
        self.handle = self.operator.handler()
        self.reference = Reference(case)

    @rule(
        card=st.sampled_from(["a", "b"]),
        amount=AMOUNTS,
        step=st.integers(0, 4),
        jitter=st.integers(-25, 10),
        keep=st.sampled_from([True, True, False]),
    )
    def event(self, card: str, amount: Any, step: int, jitter: int, keep: bool) -> None:
        self.time += step
        doc: dict[str, Any] = {"card": card, "keep": keep, "merchant": f"m{self.time % 3}"}
        if amount is not MISSING:
            doc["amount"] = amount
        position, ident = Position(self.index + 1), f"e{self.index}"
        self.index += 1
        time = self.time + jitter
        try:
            expected: Outcome = self.reference.on_event(doc, time, position, ident)
        except RefLate:
            expected = "late"
        try:
            got: Outcome = rows(self.handle(doc, time, at(position[0]), ident))
        except LateEvent:
            got = "late"
        assert got == expected

    @rule(ahead=st.integers(-5, 30))
    def idle_deadline(self, ahead: int) -> None:
        watermark = self.time + ahead
        assert rows(self.operator.advance_to(watermark)) == self.reference.advance_to(watermark)

    @precondition(lambda self: self.index % 7 == 6)
    @rule()
    def flush(self) -> None:
        assert rows(self.operator.flush()) == self.reference.flush()
        assert self.operator.state_size() == (0, 0)

    @invariant()
    def same_watermark(self) -> None:
        if hasattr(self, "operator"):
            assert self.operator.watermark_ms == self.reference.watermark

    def teardown(self) -> None:
        if hasattr(self, "operator"):
            assert rows(self.operator.flush()) == self.reference.flush()
            assert self.operator.state_size() == (0, 0)


OperatorMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
TestOperatorMachine = OperatorMachine.TestCase


def at(sequence: int) -> Record:
    """A record at ``sequence``: what the processor hands an operator's handler."""
    return Record(b"{}", "", str(sequence), 0, 0, "shardId-000000000000")
