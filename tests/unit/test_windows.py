"""The window engine on hand-computed examples: each window kind and emit mode, aggregates,
lateness, flush/advance_to, replay point and memory. Properties: test_windows_properties.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.errors import MissingFieldError, RecordError, RuleCompileError
from streamproc.records import Position, Record
from streamproc.windows import (
    LateEvent,
    WindowOperator,
    WindowResult,
    format_event_time,
    parse_event_time,
)
from streamproc.windows.sliding import SlidingEngine
from streamproc.windowspec import Aggregate, Hop, Session, Sliding, Tumble, WindowKind, WindowRule

REPO = Path(__file__).resolve().parents[2]
MINUTE = 60_000
COUNT = Aggregate("count", None, "COUNT(*)", "n")
TOTAL = Aggregate("sum", "amount", "SUM(amount)", "total")


def make_rule(
    window: WindowKind,
    *,
    aggregates: tuple[Aggregate, ...] = (COUNT,),
    group_by: tuple[str, ...] = ("card",),
    having: Callable[[Mapping[str, Any]], bool] | None = None,
    **options: Any,
) -> WindowRule:
    select = group_by + tuple(a.alias for a in aggregates)
    return WindowRule(
        name="r",
        version=1,
        window=window,
        group_by=group_by,
        aggregates=aggregates,
        select=select,
        having=having,
        **options,
    )


def n_at_least(threshold: int) -> Callable[[Mapping[str, Any]], bool]:
    return lambda scope: scope["COUNT(*)"] >= threshold


class Feed:
    """Feeds records to an operator with positions 1, 2, 3... and identities e1, e2, e3..."""

    def __init__(self, rule: WindowRule) -> None:
        self.operator = WindowOperator(rule)
        self.count = 0

    def __call__(self, time: int, card: Any = "a", **fields: Any) -> list[WindowResult]:
        self.count += 1
        doc = {"card": card, **fields}
        return self.operator.on_event(
            doc, event_time_ms=time, position=Position(self.count), identity=f"e{self.count}"
        )


def brief(results: list[WindowResult]) -> list[tuple[Any, ...]]:
    """(key, start, end, values without the key, event time, trigger seq, identity, correction)"""
    return [
        (
            r.key[0] if len(r.key) == 1 else r.key,
            r.window_start_ms,
            r.window_end_ms,
            {k: v for k, v in r.values.items() if k != "card"},
            r.event_time_ms,
            None if r.trigger is None else r.trigger.sequence_number,
            r.trigger_identity,
            r.correction,
        )
        for r in results
    ]


# ---------------------------------------------------------------------------- event time


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("2024-05-01T12:00:00Z", 1_714_564_800_000),
        ("2024-05-01T14:00:00+02:00", 1_714_564_800_000),
        ("2024-05-01T12:00:00.2509Z", 1_714_564_800_250),  # sub-ms digits are cut
        ("1969-12-31T23:59:59.9995Z", -1),  # floor, also before the epoch
        (1_714_564_800, 1_714_564_800_000),  # seconds
        (1_714_564_800.25, 1_714_564_800_250),
        (1_714_564_800_000, 1_714_564_800_000),  # milliseconds (>= 10^11)
        (99_999_999_999, 99_999_999_999_000),  # just below 10^11: still seconds
        (0, 0),
    ],
)
def test_parse_event_time(value: Any, millis: int) -> None:
    assert parse_event_time(value) == millis


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-05-01T12:00:00", "has no UTC offset"),
        ("2024-05-01", "has no UTC offset"),
        ("yesterday", "is not an ISO-8601 timestamp"),
        ("1714564800", "is not an ISO-8601 timestamp"),
        (True, "got a boolean"),
        (None, "got null"),
        ([1], "got a list"),
        ({"t": 1}, "got an object"),
        (float("nan"), "not a finite number"),
        (10**17, "outside the years 1 to 9999"),
    ],
)
def test_parse_event_time_rejects_bad_values_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(RecordError) as raised:
        parse_event_time(value)
    assert reason in raised.value.reason


def test_parse_event_time_caches_give_the_full_parse_for_every_string() -> None:
    """The fast paths (last string, cached seconds, cached format prefixes) against the full
    parse, over strings that share seconds, repeat, alternate and cross the epoch."""
    from streamproc.windows import eventtime

    times = [0, -1, -999, 999, 1_000, 1_714_564_800_250, 1_714_564_800_251, 1_714_564_801_000]
    for millis in times * 3 + times[::-1]:
        text = format_event_time(millis)
        assert text == eventtime._format(millis)
        assert parse_event_time(text) == millis
        assert parse_event_time(text) == millis  # the same string again
        assert parse_event_time(str(text)) == eventtime._parse(text, str)
        copy = "".join(text)  # an equal text in another string object
        assert copy is not text and parse_event_time(copy) == millis
    parse_event_time("2024-05-01T12:00:00.250Z")
    with pytest.raises(RecordError):
        parse_event_time(None)  # never the remembered value of another input
    assert parse_event_time(1) == 1_000
    with pytest.raises(RecordError, match="boolean"):
        parse_event_time(True)  # equal to 1, but not a time


def test_format_event_time() -> None:
    assert format_event_time(1_714_564_800_250) == "2024-05-01T12:00:00.250Z"
    assert format_event_time(-1) == "1969-12-31T23:59:59.999Z"
    assert format_event_time(10**18) == f"{10**18} ms since the epoch"


# ---------------------------------------------------------------------------- tumble


def test_tumble_final_emits_each_key_window_once_at_close_if_having_holds() -> None:
    feed = Feed(make_rule(Tumble(10), aggregates=(COUNT, TOTAL), having=n_at_least(2)))
    assert feed(1, amount=5) == []
    assert feed(4, amount=7) == []
    assert feed(5, "b") == []
    # time 12 closes [0, 10): a has 2 (HAVING holds), b has 1 (it does not)
    assert brief(feed(12, amount=1)) == [("a", 0, 10, {"n": 2, "total": 12}, 4, 4, None, False)]
    assert brief(feed.operator.flush()) == []  # [10, 20) has one record: HAVING fails
    assert feed.operator.state_size() == (0, 0)


def test_tumble_early_fires_once_per_key_and_window_and_never_at_close() -> None:
    feed = Feed(make_rule(Tumble(10), having=n_at_least(2), emit="early"))
    assert feed(1) == []
    assert brief(feed(4)) == [("a", 0, 10, {"n": 2}, 4, 2, "e2", False)]
    assert feed(6) == []  # already fired for [0, 10)
    assert brief(feed(13)) == []  # closes [0, 10): nothing more
    assert brief(feed(14)) == [("a", 10, 20, {"n": 2}, 14, 5, "e5", False)]
    assert feed.operator.flush() == []


def test_results_of_one_call_are_ordered_by_end_then_key() -> None:
    feed = Feed(make_rule(Tumble(10), allowed_lateness_ms=5))
    feed(3, "b")
    feed(1, "a")
    feed(12, "c")
    feed(14, "a")
    # time 30 closes [0, 10) and [10, 20): by end, then key
    assert [(r.key, r.window_end_ms) for r in feed(30, "z")] == [
        (("a",), 10),
        (("b",), 10),
        (("a",), 20),
        (("c",), 20),
    ]


# ---------------------------------------------------------------------------- hop


def test_hop_final_combines_panes_into_every_window() -> None:
    feed = Feed(make_rule(Hop(5, 15)))
    assert feed(1) == []
    assert brief(feed(6)) == [("a", -10, 5, {"n": 1}, 1, 2, None, False)]
    assert brief(feed(11)) == [("a", -5, 10, {"n": 2}, 6, 3, None, False)]
    assert brief(feed(40, "b")) == [
        ("a", 0, 15, {"n": 3}, 11, 4, None, False),
        ("a", 5, 20, {"n": 2}, 11, 4, None, False),
        ("a", 10, 25, {"n": 1}, 11, 4, None, False),
    ]
    assert [r.window_start_ms for r in feed.operator.flush()] == [30, 35, 40]


def test_hop_early_fires_per_window_as_it_reaches_having() -> None:
    feed = Feed(make_rule(Hop(5, 15), having=n_at_least(2), emit="early"))
    assert feed(1) == []
    assert brief(feed(6)) == [
        ("a", -5, 10, {"n": 2}, 6, 2, "e2", False),
        ("a", 0, 15, {"n": 2}, 6, 2, "e2", False),
    ]
    assert brief(feed(11)) == [("a", 5, 20, {"n": 2}, 11, 3, "e3", False)]
    assert feed.operator.flush() == []


def test_hop_key_leaving_after_a_silence_is_not_reported_again() -> None:
    """A key's cached result is dropped at the boundary where its last pane leaves, even when
    the watermark then jumps far ahead."""
    feed = Feed(make_rule(Hop(1, 3)))
    feed(0)
    assert [(r.key, r.window_start_ms) for r in feed(100, "b")] == [
        (("a",), -2),
        (("a",), -1),
        (("a",), 0),
    ]
    assert {r.key for r in feed(200, "c")} == {("b",)}


def test_hop_windows_are_aligned_to_the_epoch_for_negative_times() -> None:
    feed = Feed(make_rule(Hop(5, 10)))
    feed(-7)
    assert [(r.window_start_ms, r.window_end_ms) for r in feed.operator.flush()] == [
        (-15, -5),
        (-10, 0),
    ]


# ---------------------------------------------------------------------------- session


def test_session_final_closes_after_the_gap() -> None:
    feed = Feed(make_rule(Session(5)))
    feed(0)
    feed(3)
    assert brief(feed(10)) == [("a", 0, 8, {"n": 2}, 3, 3, None, False)]
    assert brief(feed.operator.flush()) == [("a", 10, 15, {"n": 1}, 10, None, None, False)]


def test_sessions_closing_together_come_by_end_then_key() -> None:
    feed = Feed(make_rule(Session(5), allowed_lateness_ms=5))
    feed(2, "c")
    feed(1, "b")
    feed(1, "a")
    assert [(r.key, r.window_end_ms) for r in feed(20, "z")] == [
        (("a",), 6),
        (("b",), 6),
        (("c",), 7),
    ]


def test_session_merge_when_an_event_bridges_two_sessions() -> None:
    feed = Feed(make_rule(Session(6), allowed_lateness_ms=20))
    feed(0)
    feed(10)
    assert feed.operator.state_size() == (1, 2)
    feed(5)  # within the gap of both: one session [0, 16)
    assert feed.operator.state_size() == (1, 1)
    assert brief(feed.operator.flush()) == [("a", 0, 16, {"n": 3}, 10, None, None, False)]


def test_session_early_fires_once_even_across_a_merge() -> None:
    feed = Feed(make_rule(Session(6), having=n_at_least(2), emit="early", allowed_lateness_ms=20))
    assert feed(0) == []
    assert feed(10) == []
    assert brief(feed(12)) == [("a", 10, 18, {"n": 2}, 12, 3, "e3", False)]
    assert feed(5) == []  # merged with the session that fired: it has emitted
    assert feed.operator.flush() == []


def test_session_early_fires_for_a_session_that_had_not_fired() -> None:
    feed = Feed(make_rule(Session(6), having=n_at_least(2), emit="early", allowed_lateness_ms=20))
    feed(0)
    feed(10)
    assert brief(feed(5)) == [("a", 0, 16, {"n": 3}, 5, 3, "e3", False)]


# ---------------------------------------------------------------------------- sliding


def test_sliding_fires_at_the_sixth_of_eight_and_rearms_after_having_turns_false() -> None:
    feed = Feed(make_rule(Sliding(10 * MINUTE), having=lambda s: s["n"] > 5))
    base = 1_714_564_800_000
    burst = [brief(feed(base + i * MINUTE)) for i in range(8)]
    assert [len(results) for results in burst] == [0, 0, 0, 0, 0, 1, 0, 0]
    assert burst[5] == [
        (
            "a",
            base + 5 * MINUTE - 10 * MINUTE + 1,
            base + 5 * MINUTE + 1,
            {"n": 6},
            base + 5 * MINUTE,
            6,
            "e6",
            False,
        )
    ]
    # 20 minutes later the range holds one event: HAVING false, the key re-arms
    later = base + 30 * MINUTE
    second = [feed(later + i * 1000) for i in range(7)]
    assert [len(results) for results in second] == [0, 0, 0, 0, 0, 1, 0]
    assert second[5][0].values == {"card": "a", "n": 6}


def test_sliding_counts_out_of_order_events_that_arrived_in_range() -> None:
    feed = Feed(make_rule(Sliding(10), having=n_at_least(3), allowed_lateness_ms=50))
    feed(20)
    feed(15)
    assert brief(feed(12)) == []  # (2, 12]: only itself; 15 and 20 are after it
    assert brief(feed(21)) == [("a", 12, 22, {"n": 4}, 21, 4, "e4", False)]


def test_sliding_keys_are_independent_and_forgotten_when_out_of_range() -> None:
    feed = Feed(make_rule(Sliding(10), having=n_at_least(1)))
    assert len(feed(1, "a")) == 1
    assert len(feed(2, "b")) == 1
    assert feed(3, "a") == []  # still true: no new crossing
    assert feed.operator.state_size() == (2, 3)
    feed(100, "c")
    assert feed.operator.state_size() == (1, 1)  # a and b forgotten
    assert len(feed(101, "a")) == 1  # a starts afresh


# ---------------------------------------------------------------------------- aggregates


def test_aggregates_ignore_nulls_and_mixed_types() -> None:
    aggregates = (
        COUNT,
        Aggregate("count", "amount", "COUNT(amount)", "amounts"),
        TOTAL,
        Aggregate("avg", "amount", "AVG(amount)", "mean"),
        Aggregate("min", "amount", "MIN(amount)", "lo"),
        Aggregate("max", "amount", "MAX(amount)", "hi"),
    )
    feed = Feed(make_rule(Tumble(100), aggregates=aggregates))
    for amount in [None, "missing", 4, "x", 2.5, True, "a", [1], {"v": 1}]:
        if amount == "missing":
            feed(1)
        else:
            feed(1, amount=amount)
    [result] = feed.operator.flush()
    assert result.values == {
        "card": "a",
        "n": 9,
        "amounts": 7,  # every non-NULL value
        "total": 6.5,  # numbers only: not "x", not True
        "mean": 3.25,
        "lo": 2.5,  # numbers came first: strings are ignored
        "hi": 4,
    }


def test_min_max_take_the_family_that_arrived_first() -> None:
    aggregates = (
        Aggregate("min", "v", "MIN(v)", "lo"),
        Aggregate("max", "v", "MAX(v)", "hi"),
    )
    feed = Feed(make_rule(Hop(10, 20), aggregates=aggregates, allowed_lateness_ms=20))
    feed(12, v=3)  # pane [10, 20): a number, but it arrived second
    feed(5, v="b")  # pane [0, 10)
    feed(15, v="a")
    feed(7, v=1)
    results = feed.operator.flush()
    assert [(r.window_start_ms, r.values["lo"], r.values["hi"]) for r in results] == [
        (-10, "b", "b"),
        (0, 1, 3),  # 3 (pane [10, 20)) arrived before "b" (pane [0, 10)): numbers
        (10, 3, 3),  # the window [10, 30) got 3 first
    ]


def test_sum_of_ints_stays_an_int_and_empty_aggregates_are_null() -> None:
    aggregates = (
        TOTAL,
        Aggregate("avg", "amount", "AVG(amount)", "mean"),
        Aggregate("min", "amount", "MIN(amount)", "lo"),
        Aggregate("count_distinct", "amount", "COUNT(DISTINCT amount)", "kinds"),
    )
    feed = Feed(make_rule(Tumble(10), aggregates=aggregates))
    feed(1, amount=2)
    feed(2, amount=3)
    first, second = feed(11, "b") + feed.operator.flush()
    assert first.values == {"card": "a", "total": 5, "mean": 2.5, "lo": 2, "kinds": 2}
    assert type(first.values["total"]) is int
    assert second.values == {"card": "b", "total": None, "mean": None, "lo": None, "kinds": 0}


def test_count_distinct_over_json_values() -> None:
    aggregates = (Aggregate("count_distinct", "m", "COUNT(DISTINCT m)", "merchants"),)
    feed = Feed(make_rule(Tumble(10), aggregates=aggregates))
    values = ["m1", "m1", "m2", 1, 1.0, True, {"a": 1, "b": 2}, {"b": 2, "a": 1}, [1, 2], None]
    for value in values:
        feed(1, m=value)
    feed(1)  # missing: NULL
    [result] = feed.operator.flush()
    # m1, m2, 1 (= 1.0), true (not 1), one object (key order does not matter), [1, 2]
    assert result.values["merchants"] == 6


def test_having_sees_names_aliases_and_group_by_fields() -> None:
    seen: list[dict[str, Any]] = []

    def having(scope: Mapping[str, Any]) -> bool:
        seen.append(dict(scope))
        return True

    feed = Feed(make_rule(Tumble(10), aggregates=(COUNT, TOTAL), having=having))
    feed(1, amount=3)
    feed.operator.flush()
    assert seen == [{"card": "a", "COUNT(*)": 1, "n": 1, "SUM(amount)": 3, "total": 3}]


AMOUNTS = Aggregate("count", "amount", "COUNT(amount)", "total")


@pytest.mark.parametrize(
    ("having", "reads", "total"),
    [
        (None, None, TOTAL),  # no HAVING: the values are picked straight away
        # counts only: the verdict is kept per tuple of counts, and reused for the second key
        (lambda scope: scope["COUNT(*)"] >= 1, frozenset({"COUNT(*)"}), AMOUNTS),
        # reads the key and a sum: HAVING runs on every check
        (lambda scope: scope["card"] != "z" and scope["total"] > 0, None, TOTAL),
    ],
    ids=["no having", "counts only", "key and sum"],
)
@pytest.mark.parametrize("window", [Tumble(10), Sliding(10)], ids=["tumble", "sliding"])
def test_selected_values_in_select_order_on_every_having_path(
    window: WindowKind,
    having: Callable[[Mapping[str, Any]], bool] | None,
    reads: frozenset[str] | None,
    total: Aggregate,
) -> None:
    """Values come in SELECT order (not the scope's), an aggregate by its alias, for two keys
    (where the rule keeps verdicts, the second key's event takes the first one's)."""
    rule = dataclasses.replace(
        make_rule(window, aggregates=(COUNT, total), having=having, emit="early"),
        select=("total", "card", "n"),
        having_reads=reads,
    )
    feed = Feed(rule)
    got = [r.values for r in feed(1, "a", amount=3) + feed(2, "b", amount=4)]
    sums = (1, 1) if total is AMOUNTS else (3, 4)
    assert got == [{"total": sums[0], "card": "a", "n": 1}, {"total": sums[1], "card": "b", "n": 1}]
    assert [list(values) for values in got] == [["total", "card", "n"]] * 2


# ---------------------------------------------------------------------------- keys and where


def test_group_by_several_fields_and_no_field() -> None:
    feed = Feed(make_rule(Tumble(10), group_by=("card", "shop.id")))
    feed(1, shop={"id": 1})
    feed(2, shop={"id": 1.0})  # a whole float is the int: same group
    feed(3, shop={"id": True})  # a boolean is its own group, not 1
    keys = [r.key for r in feed.operator.flush()]
    assert keys == [("a", 1), ("a", True)]
    assert type(keys[1][1]) is bool

    whole = Feed(make_rule(Tumble(10), group_by=()))
    whole(1, "a")
    whole(2, "b")
    [result] = whole.operator.flush()
    assert (result.key, result.values) == ((), {"n": 2})


def test_bad_group_by_values_are_record_errors_and_change_nothing() -> None:
    feed = Feed(make_rule(Tumble(10)))
    feed(1)
    with pytest.raises(MissingFieldError):
        feed.operator.on_event({}, event_time_ms=50, position=Position(9), identity="x")
    with pytest.raises(RecordError, match="group-by field 'card' holds a list"):
        feed(50, ["a"])
    assert feed.operator.watermark_ms == 1  # neither moved time
    assert [r.values for r in feed.operator.flush()] == [{"card": "a", "n": 1}]


@pytest.mark.parametrize("window", [Tumble(10), Hop(5, 10), Session(10), Sliding(10)])
@pytest.mark.parametrize("entry", ["on_event", "handler"])
def test_event_times_outside_the_years_1_to_9999_are_record_errors_and_change_nothing(
    window: WindowKind, entry: str
) -> None:
    """The processor parses every time first (years 1..9999); a direct caller of the operator
    gets the same refusal, before any state changes."""
    feed = Feed(make_rule(window))
    handle = feed.operator.handler()

    def call(doc: dict[str, Any], time: int, sequence: int, identity: str) -> None:
        if entry == "on_event":
            feed.operator.on_event(doc, time, Position(sequence), identity)
        else:
            handle(doc, time, at(sequence), identity)

    late = parse_event_time("9999-12-31T23:59:59.999Z")
    call({"card": "a"}, late - 5, 1, "e1")
    call({"card": "a"}, late, 2, "e2")  # the last millisecond of the range is taken
    for bad in (late + 1, 2**63, -(2**63) - 1, parse_event_time("0001-01-01T00:00:00Z") - 1):
        with pytest.raises(RecordError, match="outside the years 1 to 9999"):
            call({"card": "a"}, bad, 3, "e3")
        with pytest.raises(RecordError, match="outside the years 1 to 9999"):
            call({"card": "new"}, bad, 3, "e3")
    assert feed.operator.watermark_ms == late
    assert feed.operator.state_size()[0] == 1  # no state for "new"
    assert feed.operator.oldest_position() == Position(1)


@pytest.mark.parametrize("window", [Tumble(10), Hop(5, 10), Session(10), Sliding(10)])
@pytest.mark.parametrize("entry", ["on_event", "handler"])
def test_an_event_after_the_latest_but_behind_a_deadline_is_late_on_every_entry(
    window: WindowKind, entry: str
) -> None:
    """advance_to (an idle shard's deadline) can put the watermark past the latest event time:
    an event between the two is late, on the fast path's entry as on on_event, and changes
    nothing; one at the deadline is on time."""
    feed = Feed(make_rule(window))
    handle = feed.operator.handler()

    def call(time: int, sequence: int) -> list[WindowResult]:
        doc, identity = {"card": "a"}, f"e{sequence}"
        if entry == "on_event":
            return feed.operator.on_event(doc, time, Position(sequence), identity)
        return list(handle(doc, time, at(sequence), identity))

    call(100, 1)
    call(101, 2)  # the key has state: the fast path's case but for the time
    feed.operator.advance_to(200)
    held = feed.operator.state_size()
    with pytest.raises(LateEvent):
        call(150, 3)
    assert feed.operator.state_size() == held
    assert feed.operator.watermark_ms == 200
    call(200, 4)
    assert feed.operator.state_size()[0] == 1


def test_missing_aggregate_field_is_null_not_an_error() -> None:
    feed = Feed(make_rule(Tumble(10), aggregates=(TOTAL,)))
    feed(1, amount=2)
    feed(2)
    feed(3, amount={"nested": 1})
    assert feed.operator.flush()[0].values == {"card": "a", "total": 2}


def test_records_filtered_by_where_still_move_time() -> None:
    feed = Feed(make_rule(Tumble(10), where=lambda doc: doc.get("ok", True)))
    feed(1)
    assert brief(feed(25, "b", ok=False)) == [("a", 0, 10, {"n": 1}, 1, 2, None, False)]
    assert feed.operator.watermark_ms == 25
    assert feed.operator.flush() == []  # "b" never entered a window


# ---------------------------------------------------------------------------- lateness


def test_late_event_dead_letter_raises_with_reason_and_changes_nothing() -> None:
    base = 1_714_564_800_000
    feed = Feed(make_rule(Tumble(MINUTE), allowed_lateness_ms=5_000))
    feed(base + 20_000)
    feed(base + 16_000)  # behind the max but not the watermark (base + 15 s): on time
    with pytest.raises(LateEvent) as raised:
        feed(base + 14_999)
    assert raised.value.reason == (
        "late event: event time 2024-05-01T12:00:14.999Z is behind the watermark "
        "2024-05-01T12:00:15.000Z of rule r"
    )
    assert raised.value.event_time_ms == base + 14_999
    assert [r.values["n"] for r in feed.operator.flush()] == [2]


def test_late_event_correction_updates_retained_windows() -> None:
    feed = Feed(make_rule(Tumble(10), late="correction", aggregates=(COUNT, TOTAL)))
    feed(5, amount=1)
    assert brief(feed(25, amount=2)) == [("a", 0, 10, {"n": 1, "total": 1}, 5, 2, None, False)]
    # watermark 25; closed windows are kept 10 ms: times >= 15 can still be corrected
    assert brief(feed(16, amount=3)) == [("a", 10, 20, {"n": 1, "total": 3}, 16, 3, "e3", True)]
    assert brief(feed(18, amount=4)) == [("a", 10, 20, {"n": 2, "total": 7}, 18, 4, "e4", True)]
    with pytest.raises(LateEvent, match="by more than the 10 ms kept for corrections"):
        feed(7)
    assert brief(feed(30, amount=5)) == [("a", 20, 30, {"n": 1, "total": 2}, 25, 6, None, False)]
    assert brief(feed.operator.flush()) == [
        ("a", 30, 40, {"n": 1, "total": 5}, 30, None, None, False)
    ]


def test_correction_of_a_late_event_into_a_still_open_window_is_ordinary() -> None:
    feed = Feed(make_rule(Hop(5, 10), late="correction"))
    feed(0)
    feed(9)  # watermark 9: [-5, 5) closed, [0, 10) open
    # 3 is late: [-5, 5) gets a correction, [0, 10) just counts it
    assert brief(feed(3)) == [("a", -5, 5, {"n": 2}, 3, 3, "e3", True)]
    assert brief(feed(10))[0] == ("a", 0, 10, {"n": 3}, 9, 4, None, False)


def test_a_late_event_reopening_an_emitted_session_yields_a_correction_at_close() -> None:
    feed = Feed(make_rule(Session(6), late="correction"))
    feed(0)
    assert brief(feed(10, "b")) == [("a", 0, 6, {"n": 1}, 0, 2, None, False)]
    assert feed(5) == []  # joins the closed session: [0, 11) is open again
    assert brief(feed(20, "b")) == [
        ("a", 0, 11, {"n": 2}, 5, 4, None, True),
        ("b", 10, 16, {"n": 1}, 10, 4, None, False),
    ]
    # a late event forming a session that is already closed: a correction right away
    assert brief(feed(14)) == [("a", 14, 20, {"n": 1}, 14, 5, "e5", True)]


def test_sliding_correction_marks_results_of_late_events() -> None:
    feed = Feed(make_rule(Sliding(10), late="correction", having=n_at_least(2)))
    feed(20)
    assert brief(feed(30)) == []  # (20, 30]: itself only
    assert brief(feed(21)) == [("a", 12, 22, {"n": 2}, 21, 3, "e3", True)]


# ---------------------------------------------------------------------------- time and state


def test_advance_to_closes_windows_without_a_trigger_and_makes_older_events_late() -> None:
    feed = Feed(make_rule(Tumble(10)))
    feed(1)
    feed(12)
    assert feed.operator.advance_to(5) == []  # behind the watermark: ignored
    assert brief(feed.operator.advance_to(20)) == [("a", 10, 20, {"n": 1}, 12, None, None, False)]
    assert feed.operator.watermark_ms == 20
    with pytest.raises(LateEvent):
        feed(19)
    assert feed.operator.state_size() == (0, 0)


def test_flush_closes_everything_frees_state_and_moves_the_watermark() -> None:
    feed = Feed(make_rule(Hop(5, 15)))
    for index in range(100):
        feed(index, f"k{index % 7}")
    assert feed.operator.state_size() == (7, 20)  # panes 80..95, 5 keys each
    results = feed.operator.flush()
    assert {r.trigger for r in results} == {None}
    assert max(r.window_end_ms for r in results) == 110
    assert feed.operator.state_size() == (0, 0)
    assert feed.operator.flush() == []
    with pytest.raises(LateEvent):
        feed(109)  # would reopen an emitted window


@pytest.mark.parametrize(
    "window", [Tumble(10), Hop(5, 20), Session(5), Sliding(10)], ids=lambda w: type(w).__name__
)
@pytest.mark.parametrize("late", ["dead_letter", "correction"])
def test_state_is_freed_as_windows_expire(window: WindowKind, late: str) -> None:
    feed = Feed(make_rule(window, late=late))
    for index in range(1000):
        feed(index * 3, f"k{index}")  # a new key every time
    keys, items = feed.operator.state_size()
    assert keys <= 20 and items <= 40  # only what the last windows need
    feed.operator.advance_to(10_000)
    assert feed.operator.state_size() == (0, 0)


def test_oldest_position_moves_forward_as_windows_close() -> None:
    feed = Feed(make_rule(Tumble(10)))
    oldest = []
    for time in [1, 5, 12, 15, 27, 31]:
        feed(time)
        oldest.append(feed.operator.oldest_position())
    assert oldest == [Position(1), Position(1), Position(3), Position(3), Position(5), Position(6)]
    feed.operator.flush()
    assert feed.operator.oldest_position() == Position(6)  # latest record setter: the watermark


def test_oldest_position_is_a_record_setter_so_a_replay_rebuilds_the_watermark() -> None:
    feed = Feed(make_rule(Tumble(10), allowed_lateness_ms=10, where=lambda doc: doc["ok"]))
    feed(25, ok=False)  # filtered out, but its time sets the watermark (15)
    feed(17, ok=True)  # on time: opens [10, 20)
    # a replay from 2 would not know the watermark and take a record at 14: start at 1
    assert feed.operator.oldest_position() == Position(1)
    replayed = WindowOperator(feed.operator.rule)
    records = [({"card": "a", "ok": False}, 25), ({"card": "a", "ok": True}, 17)]
    for seq, (doc, time) in enumerate(records, start=1):
        replayed.on_event(doc, event_time_ms=time, position=Position(seq), identity="")
    assert replayed.watermark_ms == feed.operator.watermark_ms == 15
    with pytest.raises(LateEvent):
        replayed.on_event(
            {"card": "a", "ok": True}, event_time_ms=14, position=Position(3), identity=""
        )


def test_sliding_replay_point_covers_items_that_arrived_before_older_ones() -> None:
    rule = make_rule(Sliding(10), having=n_at_least(3), allowed_lateness_ms=10)
    records = [({"card": "a"}, 25), ({"card": "z"}, 30), ({"card": "a"}, 22)]
    feed = Feed(rule)
    for doc, time in records:
        feed(time, **doc)
    # a holds 22 (arrived 3rd) and 25 (arrived 1st): the replay must start at record 1
    assert feed.operator.oldest_position() == Position(1)
    replayed = WindowOperator(rule)
    for seq, (doc, time) in enumerate(records, start=1):
        replayed.on_event(doc, event_time_ms=time, position=Position(seq), identity="")
    expected = feed(29)  # (19, 29] holds 22, 25, 29: fires
    assert [r.values["n"] for r in expected] == [3]
    got = replayed.on_event({"card": "a"}, event_time_ms=29, position=Position(4), identity="e4")
    assert got == expected


def test_sliding_replay_point_stays_put_for_a_late_event_of_an_earlier_second() -> None:
    """Replay points are the first record setter of each second (MARK_MS) of event time. A late
    event may have a time in a second whose events are all gone; its replay point is that of its
    record setter's second, so the shard's point never moves back (the runtime reuses an older
    one, which must never be later than the current one)."""
    feed = Feed(make_rule(Sliding(500), allowed_lateness_ms=300))
    feed(100, card="a")  # second 0: its mark is record 1
    feed(1_200, card="b")  # second 1: record 2; the watermark (900) forgets a (600)
    assert feed.operator.state_size() == (1, 1)
    assert feed.operator.oldest_position() == Position(2)
    feed(950, card="c")  # on time (>= 900), in second 0, behind record 2
    assert feed.operator.state_size() == (2, 2)
    assert feed.operator.oldest_position() == Position(2)
    feed(1_300, card="d")  # second 1, already marked by record 2
    assert feed.operator.state_size() == (3, 3)
    assert feed.operator.oldest_position() == Position(2)
    feed(2_200, card="e")  # the watermark (1,900) forgets b, c and d: e alone, second 2's mark
    assert feed.operator.state_size() == (1, 1)
    assert feed.operator.oldest_position() == Position(5)


def test_restart_by_replay_gives_the_same_results() -> None:
    rule = make_rule(Hop(MINUTE, 10 * MINUTE), having=n_at_least(3))
    times = [(i * 7_919) % (40 * MINUTE) + i * 1000 for i in range(300)]
    docs = [{"card": f"c{i % 5}"} for i in range(300)]

    def run(operator: WindowOperator, indexes: range) -> list[WindowResult]:
        out: list[WindowResult] = []
        for i in indexes:
            with contextlib.suppress(LateEvent):
                out += operator.on_event(
                    docs[i], event_time_ms=times[i], position=Position(i + 1), identity=str(i)
                )
        return out

    whole = WindowOperator(rule)
    expected = run(whole, range(300)) + whole.flush()
    first = WindowOperator(rule)
    run(first, range(150))
    start = first.oldest_position()
    assert start is not None and start.sequence_number <= 150
    second = WindowOperator(rule)
    run(second, range(start.sequence_number - 1, 150))
    rest = run(second, range(150, 300)) + second.flush()
    assert rest == [r for r in expected if r.trigger is None or r.trigger.sequence_number > 150]


# ---------------------------------------------------------------------------- rules, determinism


def test_invalid_rules_are_compile_errors() -> None:
    with pytest.raises(RuleCompileError, match="not a whole multiple"):
        WindowOperator(make_rule(Hop(4, 10)))
    with pytest.raises(RuleCompileError, match="positive whole number"):
        WindowOperator(make_rule(Tumble(0)))
    with pytest.raises(RuleCompileError, match="allowed lateness"):
        WindowOperator(make_rule(Tumble(10), allowed_lateness_ms=-1))
    bad_select = WindowRule("r", 1, Tumble(10), ("card",), (COUNT,), ("card", "nope"))
    with pytest.raises(RuleCompileError, match="SELECT column 'nope'"):
        WindowOperator(bad_select)


def test_results_do_not_depend_on_hash_randomisation() -> None:
    script = textwrap.dedent(
        """
        from streamproc.records import Position
        from streamproc.windows import WindowOperator
        from streamproc.windowspec import Aggregate, Hop, WindowRule
        aggs = (Aggregate("count", None, "COUNT(*)", "n"),
                Aggregate("count_distinct", "m", "COUNT(DISTINCT m)", "d"))
        rule = WindowRule("r", 1, Hop(3, 9), ("card",), aggs, ("card", "n", "d"))
        op = WindowOperator(rule)
        cards = ["x", 1, True, None, 2.5, "y", False, "z"]
        out = []
        for i in range(400):
            doc = {"card": cards[i * 7 % 8], "m": [i % 3, {"k": i % 4}]}
            out += op.on_event(doc, event_time_ms=i, position=Position(i + 1), identity=str(i))
        out += op.flush()
        print([(r.key, r.window_start_ms, r.values, r.trigger) for r in out])
        """
    )
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1
    assert json.dumps(len(next(iter(outputs)))) != "0"


def _pairs_rule(**options: Any) -> WindowRule:
    """An early count-only sliding rule over 10 ms: the fast path's kind."""
    from streamproc.windowsql import compile_window_sql

    return compile_window_sql(
        "SELECT card, COUNT(*) AS n FROM tx GROUP BY card, SLIDING(t, INTERVAL '10' MILLISECOND)"
        " HAVING COUNT(*) >= 2",
        name="pairs",
        version=1,
        emit="early",
        **options,
    )


def test_count_only_sliding_fast_path_counts_exactly_the_range() -> None:
    """The fast path of count-only sliding rules (operator.handler()) at the range's edges: the
    window of an event at t is (t - range, t], so an event exactly range ms earlier is out of
    it. Same results as the general path (on_event) for the same events."""
    rule = _pairs_rule()
    events = [("a", 0), ("a", 10), ("a", 11), ("a", 30), ("a", 39), ("a", 40), ("b", 40)]
    fast, general = WindowOperator(rule), WindowOperator(rule)
    handle = fast.handler()
    assert handle != fast.on_event  # the rule takes the fast path
    got, expected = [], []
    for index, (card, time) in enumerate(events):
        doc = {"card": card, "t": time}
        got += handle(doc, time, at(index + 1), f"e{index}")
        expected += general.on_event(doc, time, Position(index + 1), f"e{index}")
    assert [(r.values, r.trigger_identity) for r in got] == [
        ({"card": "a", "n": 2}, "e2"),  # 11: (1, 11] holds 10 and 11; at 10, (0, 10] held only 10
        ({"card": "a", "n": 2}, "e4"),  # 39: (29, 39] holds 30 and 39
    ]
    assert got == expected
    assert fast.oldest_position() == general.oldest_position()
    assert fast.state_size() == general.state_size()


def test_count_only_sliding_fast_path_drops_exactly_the_events_out_of_range() -> None:
    """HAVING COUNT(*) = 2 fires whenever the count becomes 2 again, so the count after every
    event shows: at 11 the window (1, 11] keeps the event at 2 (count 2, still true: no alert);
    at 12 the window (2, 12] drops it (count 2 again with 11 and 12: still true, no alert)."""
    from streamproc.windowsql import compile_window_sql

    rule = compile_window_sql(
        "SELECT card, COUNT(*) AS n FROM tx GROUP BY card, SLIDING(t, INTERVAL '10' MILLISECOND)"
        " HAVING COUNT(*) = 2",
        name="exactly_two",
        version=1,
    )
    handle = WindowOperator(rule).handler()
    fired = []
    for index, time in enumerate([0, 2, 11, 12, 30, 31]):
        for result in handle({"card": "d", "t": time}, time, at(index + 1), ""):
            fired.append(result.event_time_ms)
    assert fired == [2, 31]


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 60)), min_size=1, max_size=40
    ),
    late=st.sampled_from(["dead_letter", "correction"]),
)
def test_sliding_keys_know_their_first_item_time_after_every_event(
    events: list[tuple[str, int]], late: str
) -> None:
    """Each sliding key keeps the time of its first item (``first``), which the fast path reads
    instead of the item itself: after any mix of in-order, out-of-order, late and pruning
    events, through either path, it must be exactly that time (None without items)."""
    operator = WindowOperator(_pairs_rule(allowed_lateness_ms=5, late=late))
    engine = operator._engine
    assert isinstance(engine, SlidingEngine)
    handle = operator.handler()
    for index, (card, time) in enumerate(events):
        with contextlib.suppress(LateEvent):
            handle({"card": card, "t": time}, time, at(index + 1), f"e{index}")
        for state in engine.by_key.values():
            assert state.first == (state[0] if state else None)


@pytest.mark.parametrize("lateness", [0, 600_000])
def test_sliding_marks_stay_few_over_a_long_stream(lateness: int) -> None:
    """One mark per second of event time is kept only while a held item can need it: over an
    hour of events the marks stay near the seconds the held items span (the range, plus the
    lateness that keeps items held), and the replay point is the mark of the oldest one."""
    feed = Feed(make_rule(Sliding(10_000), allowed_lateness_ms=lateness))
    engine = feed.operator._engine
    assert isinstance(engine, SlidingEngine)
    most = 0
    for index in range(7_200):  # an event every 500 ms for an hour, over three cards
        feed(index * 500, card=f"c{index % 3}")
        most = max(most, len(engine.mark_seconds))
    span = (10_000 + lateness) // 1_000 + 2  # seconds a held item's mark can be behind
    assert most <= max(64, 2 * span) + 1
    assert feed.operator.state_size()[0] == 3
    oldest_time = min(state[0] for state in engine.by_key.values())
    # every event sets a record: second s's mark is the event at s * 1000 ms, record 2s + 1
    expected = Position(oldest_time // 1_000 * 2 + 1)
    assert feed.operator.oldest_position() == expected
    assert expected.sequence_number < 7_200 - (10_000 + lateness) // 500  # not the last one


def at(sequence: int) -> Record:
    """A record at ``sequence``: what the processor hands an operator's handler."""
    return Record(b"{}", "", str(sequence), 0, 0, "shardId-000000000000")
