"""Aggregate state of one window rule: create, add a record, combine partials, finish.

A *state* is a plain list so the hot path updates it in place without allocating: slot 0 holds
the greatest event time added (a window's ``event_time_ms``), slot ``1 + i`` the partial value
of aggregate ``i``. A pane, a session and a window all use the same layout, so partials combine.

Semantics (those of :class:`~streamproc.windowspec.Aggregate`):

- Values are read with :func:`~streamproc.sql_runtime.field_getter`; a missing field or a path
  through a non-object is NULL. NULL is ignored by every aggregate but ``COUNT(*)``.
- ``SUM``/``AVG`` take numbers only (int or float; a boolean is not a number); other values are
  ignored. ``SUM`` of ints stays an int; ``AVG`` is ``sum / count`` as a float. Float sums are
  added pane by pane, so they can differ in the last bits from a left-to-right sum of the same
  values (always the same for the same input).
- ``MIN``/``MAX`` compare numbers with numbers and strings with strings; the family of the value
  that *arrived first* among the window's values wins and the other family is ignored; other
  values (booleans, lists, objects) are ignored.
- ``COUNT(DISTINCT x)`` counts distinct non-NULL values: strings and numbers by value (1 and 1.0
  are one value), booleans, lists and objects by their canonical JSON (sorted keys), so
  ``true`` differs from ``1`` and ``[1, 2]`` is a value like any other.
- Over no values ``SUM``/``AVG``/``MIN``/``MAX`` are None and the counts 0.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from streamproc.errors import MissingFieldError
from streamproc.sql_runtime import field_getter
from streamproc.windowspec import Aggregate, AggregateFunction

__all__ = ["TIME", "AggregateSet", "State", "function_of"]

State = list[Any]
TIME = 0  # slot of the greatest event time added

Reader = Callable[[Mapping[str, Any]], Any]
Adder = Callable[[State, int, Any, int], None]
Merger = Callable[[State, State, int], None]
Finisher = Callable[[Any], Any]


def _null(doc: Mapping[str, Any]) -> None:
    return None


def _reader(path: str) -> Reader:
    get = field_getter(path)  # validates the path
    if "." not in path:  # records are objects: a missing top-level field is simply absent

        def read_top(doc: Mapping[str, Any]) -> Any:
            return doc.get(path)

        return read_top

    def read(doc: Mapping[str, Any]) -> Any:
        try:
            return get(doc)
        except MissingFieldError:
            return None  # a missing aggregate field is NULL, not an error

    return read


def _distinct_token(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is float:
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # not JSON (cannot come from a decoded record): ignored
        return None


# -- add one value: (state, slot, value, arrival sequence) ----------------------------------------


def _add_count_star(state: State, slot: int, value: Any, seq: int) -> None:
    state[slot] += 1


def _add_count(state: State, slot: int, value: Any, seq: int) -> None:
    if value is not None:
        state[slot] += 1


def _add_distinct(state: State, slot: int, value: Any, seq: int) -> None:
    if value is not None and (token := _distinct_token(value)) is not None:
        state[slot].add(token)


def _add_sum(state: State, slot: int, value: Any, seq: int) -> None:
    kind = type(value)
    if kind is int or kind is float:
        current = state[slot]
        state[slot] = value if current is None else current + value


def _add_avg(state: State, slot: int, value: Any, seq: int) -> None:
    kind = type(value)
    if kind is int or kind is float:
        current = state[slot]
        if current is None:
            state[slot] = [value, 1]
        else:
            current[0] += value
            current[1] += 1


def _extreme_adder(smaller: bool) -> Adder:
    # partial: [best number, first arrival of a number, best string, first arrival of a string]
    def add(state: State, slot: int, value: Any, seq: int) -> None:
        kind = type(value)
        if kind is int or kind is float:
            index = 0
        elif kind is str:
            index = 2
        else:
            return
        current = state[slot]
        if current is None:
            current = state[slot] = [None, None, None, None]
        best = current[index]
        if best is None:
            current[index] = value
            current[index + 1] = seq
            return
        if (value < best) if smaller else (value > best):
            current[index] = value
        if seq < current[index + 1]:
            current[index + 1] = seq

    return add


# -- combine a partial into another: (target, source, slot) ---------------------------------------


def _merge_count(target: State, source: State, slot: int) -> None:
    target[slot] += source[slot]


def _merge_distinct(target: State, source: State, slot: int) -> None:
    target[slot] |= source[slot]


def _merge_sum(target: State, source: State, slot: int) -> None:
    if (value := source[slot]) is not None:
        current = target[slot]
        target[slot] = value if current is None else current + value


def _merge_avg(target: State, source: State, slot: int) -> None:
    if (value := source[slot]) is not None:
        current = target[slot]
        if current is None:
            target[slot] = list(value)
        else:
            current[0] += value[0]
            current[1] += value[1]


def _extreme_merger(smaller: bool) -> Merger:
    def merge(target: State, source: State, slot: int) -> None:
        value = source[slot]
        if value is None:
            return
        current = target[slot]
        if current is None:
            target[slot] = list(value)
            return
        for index in (0, 2):
            best = value[index]
            if best is None:
                continue
            mine = current[index]
            if mine is None or ((best < mine) if smaller else (best > mine)):
                current[index] = best
            if current[index + 1] is None or value[index + 1] < current[index + 1]:
                current[index + 1] = value[index + 1]

    return merge


# -- finish a partial into the output value ---------------------------------------------------


def _finish_plain(value: Any) -> Any:
    return value


def _finish_distinct(value: set[Any]) -> int:
    return len(value)


def _finish_avg(value: list[Any] | None) -> float | None:
    return None if value is None else value[0] / value[1]


def _finish_extreme(value: list[Any] | None) -> Any:
    if value is None:
        return None
    number_first, string_first = value[1], value[3]
    if string_first is None or (number_first is not None and number_first < string_first):
        return value[0]
    return value[2]


_OPS: dict[AggregateFunction, tuple[Adder, Merger, Finisher]] = {
    "count": (_add_count, _merge_count, _finish_plain),
    "count_distinct": (_add_distinct, _merge_distinct, _finish_distinct),
    "sum": (_add_sum, _merge_sum, _finish_plain),
    "avg": (_add_avg, _merge_avg, _finish_avg),
    "min": (_extreme_adder(True), _extreme_merger(True), _finish_extreme),
    "max": (_extreme_adder(False), _extreme_merger(False), _finish_extreme),
}


class AggregateSet:
    """The aggregates of one rule, compiled once: every method is on the hot path."""

    __slots__ = (
        "_adds",
        "_aggregates",
        "_finishers",
        "_known",
        "_merges",
        "_readers",
        "_set_slots",
        "_template",
        "add",
        "count_star_only",
        "extract",
        "finish",
    )

    def __init__(self, aggregates: Sequence[Aggregate]) -> None:
        readers: list[Reader] = []
        adds: list[tuple[int, Adder]] = []
        merges: list[tuple[int, Merger]] = []
        finishers: list[tuple[int, Finisher]] = []
        template: State = [0]
        set_slots: list[int] = []
        for slot, aggregate in enumerate(aggregates, start=1):
            add, merge, finish = _OPS[aggregate.function]
            if aggregate.function == "count" and aggregate.field is None:
                add = _add_count_star
            readers.append(_null if aggregate.field is None else _reader(aggregate.field))
            adds.append((slot, add))
            merges.append((slot, merge))
            finishers.append((slot, finish))
            template.append(0 if aggregate.function == "count" else None)
            if aggregate.function == "count_distinct":
                set_slots.append(slot)
        self._readers = tuple(readers)
        self._adds = tuple(adds)
        self._merges = tuple(merges)
        self._finishers = tuple(finishers)
        self._template = template
        self._set_slots = tuple(set_slots)
        self._aggregates = tuple(aggregates)
        # COUNT(DISTINCT) strings met so far, per slot: see _KNOWN_LIMIT (shared by every
        # generated adder of this set, so equal strings stay one object)
        self._known: dict[int, dict[str, str]] = {slot: {} for slot in set_slots}
        self.count_star_only = all(add is _add_count_star for _, add in adds)
        # The three below are generated functions, not bound methods: the set keeps them, and a
        # bound method kept by its own object is a cycle (freed only by a full collection).
        #: ``add(state, record, event time, arrival sequence)``: add one record in place.
        self.add: Callable[[State, Mapping[str, Any], int, int], None]
        #: ``extract(record)``: the values the aggregates read, for :meth:`add_values` later.
        self.extract: Callable[[Mapping[str, Any]], tuple[Any, ...]]
        #: ``finish(state)``: the output value of each aggregate, in rule order (JSON types).
        self.finish: Callable[[State], list[Any]]
        if all(finish is _finish_plain for _, finish in finishers):
            self.finish = _plain_values
        else:
            self.finish = _generated_finisher(finishers)
        if self.count_star_only:
            self.add = _count_star_adder(len(adds))
            self.extract = _no_values
        else:
            self.add = _generated_adder(aggregates, adds, readers, self._known)
            self.extract = _extractor(self._readers)

    def inline_add(self) -> tuple[str, dict[str, Any], bool]:
        """:attr:`add` for a generated fast path that sets the time slot itself: the steps'
        source (function-body indentation, over the locals ``state``, ``doc`` and ``seq``),
        the names it reads (to put in the function's namespace) and whether it reads ``seq``."""
        return _add_steps(self._aggregates, self._adds, self._readers, self._known)

    def new_state(self, event_time: int) -> State:
        """An empty state (no records) stamped with ``event_time`` as its greatest time."""
        state = self._template.copy()
        state[TIME] = event_time
        for slot in self._set_slots:
            state[slot] = set()
        return state

    def _add(self, state: State, doc: Mapping[str, Any], event_time: int, seq: int) -> None:
        if event_time > state[TIME]:
            state[TIME] = event_time
        for (slot, add), read in zip(self._adds, self._readers, strict=True):
            add(state, slot, read(doc), seq)

    def add_values(self, state: State, values: tuple[Any, ...], event_time: int, seq: int) -> None:
        """Add a record from the values :attr:`extract` took from it."""
        if event_time > state[TIME]:
            state[TIME] = event_time
        if self.count_star_only:
            for slot, _ in self._adds:
                state[slot] += 1
            return
        for (slot, add), value in zip(self._adds, values, strict=True):
            add(state, slot, value, seq)

    def merge(self, target: State, source: State) -> None:
        """Combine ``source`` into ``target`` (``source`` is left unchanged and unshared)."""
        if source[TIME] > target[TIME]:
            target[TIME] = source[TIME]
        for slot, merge in self._merges:
            merge(target, source, slot)

    def combine(self, states: Iterable[State]) -> State:
        """A new state holding every given state (one state is returned as is: read only)."""
        items = list(states)
        if len(items) == 1:
            return items[0]
        combined = self.new_state(items[0][TIME])
        for state in items:
            self.merge(combined, state)
        return combined

    def _finish(self, state: State) -> list[Any]:
        return [finish(state[slot]) for slot, finish in self._finishers]


def _plain_values(state: State) -> list[Any]:
    return state[1:]  # counts and sums are their own output


def _no_values(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    return ()


def _count_star_adder(count: int) -> Callable[[State, Mapping[str, Any], int, int], None]:
    if count == 1:

        def add_one(state: State, doc: Mapping[str, Any], event_time: int, seq: int) -> None:
            if event_time > state[0]:
                state[0] = event_time
            state[1] += 1

        return add_one
    slots = tuple(range(1, count + 1))

    def add(state: State, doc: Mapping[str, Any], event_time: int, seq: int) -> None:
        if event_time > state[0]:
            state[0] = event_time
        for slot in slots:
            state[slot] += 1

    return add


# -- generated functions: add a record to a state, finish a state ------------------------------
#
def _extractor(readers: tuple[Reader, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``extract(doc)``: the value each aggregate reads from ``doc``, in order."""

    def extract(doc: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple([read(doc) for read in readers])

    return extract


# AggregateSet._add loops over (adder, reader) pairs: two calls per aggregate and record, and
# _finish over finishers. The generated functions do the same in one call, with counts, sums and
# distinct sets inline. Their source is built from the constant snippets below and slot numbers
# only (never rule text): field names, readers, adders and finishers are values in the function's
# namespace, whose builtins are empty.

# A distinct set holds the first string of each value it meets: with 50,000 cards and a few
# dozen merchants, every card's set would keep its own copies (one object per record that
# brought a new value), each a memory fetch when the next record's value is compared with it.
# The adder keeps one string per value (``KNOWN_<slot>``, per rule and shard) and puts that in
# the sets: equal strings are then the same object, found by identity, and stored once. Values
# past the first _KNOWN_LIMIT are put in as they come (a high-cardinality field, e.g. ids).
_KNOWN_LIMIT = 4096

_ADD_HEAD = """
def add(state, doc, event_time, seq):
    if event_time > state[0]:
        state[0] = event_time
"""
_ADD_STEP: dict[str, str] = {
    "count_star": """
    state[{slot}] += 1
""",
    "count": """
    if {value} is not None:
        state[{slot}] += 1
""",
    "sum": """
    value = {value}
    kind = value.__class__
    if kind is int or kind is float:
        current = state[{slot}]
        state[{slot}] = value if current is None else current + value
""",
    "count_distinct": """
    value = {value}
    if value is not None:
        kind = value.__class__
        if kind is str:
            known = KNOWN_{slot}.get(value)
            if known is None:
                if len(KNOWN_{slot}) < KNOWN_LIMIT:
                    KNOWN_{slot}[value] = value
                known = value
            state[{slot}].add(known)
        elif kind is int or kind is float:
            state[{slot}].add(value)
        elif (value := TOKEN(value)) is not None:
            state[{slot}].add(value)
""",
    "call": """
    ADD_{slot}(state, {slot}, {value}, seq)
""",
}


def _add_steps(
    aggregates: Sequence[Aggregate],
    adds: Sequence[tuple[int, Adder]],
    readers: Sequence[Reader],
    known: Mapping[int, dict[str, str]],
) -> tuple[str, dict[str, Any], bool]:
    """The steps of ``AggregateSet._add`` after the time slot, as source at function-body
    indentation over the locals ``state``, ``doc`` and ``seq``; the names they read; and whether
    they read ``seq`` (only the aggregates added through their adder do)."""
    namespace: dict[str, Any] = {
        "int": int,
        "float": float,
        "str": str,
        "TOKEN": _distinct_token,
        "KNOWN_LIMIT": _KNOWN_LIMIT,
        "len": len,
    }
    source = []
    uses_seq = False
    for aggregate, (slot, add), read in zip(aggregates, adds, readers, strict=True):
        if add is _add_count_star:
            source.append(_ADD_STEP["count_star"].format(slot=slot))
            continue
        field = aggregate.field
        if field is None:  # (only COUNT(*) reads no field: the reader gives NULL)
            value = "None"
        elif "." in field:
            namespace[f"READ_{slot}"] = read  # a nested path: the reader walks it
            value = f"READ_{slot}(doc)"
        else:
            namespace[f"FIELD_{slot}"] = field
            value = f"doc.get(FIELD_{slot})"
        kind = aggregate.function if aggregate.function in _ADD_STEP else "call"
        if kind == "call":
            namespace[f"ADD_{slot}"] = add
            uses_seq = True
        elif kind == "count_distinct":
            namespace[f"KNOWN_{slot}"] = known[slot]
        source.append(_ADD_STEP[kind].format(slot=slot, value=value))
    return "".join(source), namespace, uses_seq


def _generated_adder(
    aggregates: Sequence[Aggregate],
    adds: Sequence[tuple[int, Adder]],
    readers: Sequence[Reader],
    known: Mapping[int, dict[str, str]],
) -> Callable[[State, Mapping[str, Any], int, int], None]:
    """``AggregateSet._add`` as one function (same semantics: the property tests compare)."""
    steps, names, _ = _add_steps(aggregates, adds, readers, known)
    namespace: dict[str, Any] = {"__builtins__": {}, **names}
    return function_of(_ADD_HEAD + steps, namespace, "add")


def _generated_finisher(finishers: Sequence[tuple[int, Finisher]]) -> Callable[[State], list[Any]]:
    """``AggregateSet._finish`` as one function: counts and sums as they are, distinct counts
    as the size of their set, the others through their finisher."""
    namespace: dict[str, Any] = {"__builtins__": {}, "len": len}
    parts = []
    for slot, finish in finishers:
        if finish is _finish_plain:
            parts.append(f"state[{slot}]")
        elif finish is _finish_distinct:
            parts.append(f"len(state[{slot}])")
        else:
            namespace[f"FINISH_{slot}"] = finish
            parts.append(f"FINISH_{slot}(state[{slot}])")
    source = f"def finish(state):\n    return [{', '.join(parts)}]\n"
    return function_of(source, namespace, "finish")


def function_of(
    source: str, namespace: dict[str, Any], name: str, filename: str = "<aggregates>"
) -> types.FunctionType:
    """The function defined by ``source`` (built from our snippets and slot numbers, never rule
    text), bound to ``namespace``. Nothing is executed: the function's code object is taken out
    of the compiled module."""
    code = compile(ast.parse(source), filename, "exec", dont_inherit=True)
    (function_code,) = (c for c in code.co_consts if isinstance(c, types.CodeType))
    return types.FunctionType(function_code, namespace, name)
