"""The generated aggregate functions against the plain loops they replace.

``AggregateSet.add`` and ``.finish`` are generated per rule (one call per record instead of two per
aggregate); ``_add`` and ``_finish`` are the loops over the per-aggregate functions, kept as the
reference. Every kind of value a decoded record can hold goes through both.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.windows.aggregates import AggregateSet
from streamproc.windowspec import Aggregate

AGGREGATES = (
    Aggregate("count", None, "COUNT(*)", "n"),
    Aggregate("count", "amount", "COUNT(amount)", "amounts"),
    Aggregate("sum", "amount", "SUM(amount)", "total"),
    Aggregate("avg", "amount", "AVG(amount)", "mean"),
    Aggregate("min", "amount", "MIN(amount)", "lo"),
    Aggregate("max", "merchant", "MAX(merchant)", "hi"),
    Aggregate("count_distinct", "merchant", "COUNT(DISTINCT merchant)", "merchants"),
    Aggregate("sum", "card.limit", "SUM(card.limit)", "limits"),
    Aggregate("count_distinct", "card.limit", "COUNT(DISTINCT card.limit)", "distinct_limits"),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-50, 50),
    st.floats(-100, 100, allow_nan=False),
    st.sampled_from(["a", "b", "Luxe Watches"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.just("k"), SCALARS))
DOCS = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "amount": VALUES,
            "merchant": VALUES,
            "card": st.one_of(VALUES, st.fixed_dictionaries({"limit": VALUES})),
        },
    ),
    max_size=12,
)


def test_the_generated_functions_are_used() -> None:
    aggregates = AggregateSet(AGGREGATES)
    assert (
        aggregates.add.__name__ == "add" and aggregates.add.__code__.co_filename == "<aggregates>"
    )
    assert aggregates.finish.__code__.co_filename == "<aggregates>"


@settings(max_examples=300, deadline=None)
@given(docs=DOCS, subset=st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=4, unique=True))
def test_generated_add_and_finish_equal_the_loops(
    docs: list[dict[str, Any]], subset: list[Aggregate]
) -> None:
    aggregates = AggregateSet(subset)
    generated, looped = aggregates.new_state(0), aggregates.new_state(0)
    for seq, doc in enumerate(docs, start=1):
        aggregates.add(generated, doc, seq * 10 % 37, seq)
        aggregates._add(looped, doc, seq * 10 % 37, seq)
    assert generated == looped
    assert aggregates.finish(generated) == aggregates._finish(looped)
    assert [type(v) for v in aggregates.finish(generated)] == [
        type(v) for v in aggregates._finish(looped)
    ]


def test_distinct_sets_of_different_keys_share_one_string_per_value() -> None:
    """Each record decodes its own string objects; a distinct set keeps the rule's first one of
    each value, so 50,000 cards' sets do not each hold copies. Past the limit of known values a
    value goes in as it came, and counts are the same either way."""
    aggregates = AggregateSet((Aggregate("count_distinct", "merchant", "COUNT(DISTINCT m)", "m"),))
    first, second = aggregates.new_state(0), aggregates.new_state(0)
    name = "Luxe Watches"
    copies = [name[:4] + name[4:] for _ in range(3)]  # equal, not identical
    assert len({id(c) for c in copies}) == 3
    aggregates.add(first, {"merchant": copies[0]}, 1, 1)
    aggregates.add(second, {"merchant": copies[1]}, 2, 2)
    aggregates.add(second, {"merchant": copies[2]}, 3, 3)
    (kept_first,) = first[1]
    (kept_second,) = second[1]
    assert kept_first is copies[0] and kept_second is copies[0]
    assert aggregates.finish(second) == [1]

    many = aggregates.new_state(0)
    values = [f"m{i}" for i in range(5000)]  # more than the known values kept (4096)
    for seq, value in enumerate(values + [v[:1] + v[1:] for v in values], start=1):
        aggregates.add(many, {"merchant": value}, seq, seq)
    assert aggregates.finish(many) == [5000]
    assert many[1] == set(values)
