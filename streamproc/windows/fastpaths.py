"""Generated fast paths of the window operator: one function per rule and shard.

A fast path does for the common event what :meth:`WindowOperator.on_event` does, in fewer
steps: an on-time event (at or after every earlier one, not behind the watermark) of a key
whose state is already there. Any other event goes to ``on_event`` (the general path), which
makes the same changes; ``tests/unit/test_windows_properties.py`` checks both against a
brute-force model for every window kind, emit mode and aggregate mix.

Each is generated for its rule: the rule's choices (a WHERE or not, a top-level GROUP BY field
or a path, early or final) pick the lines, and the aggregates' updates are written inline
(:meth:`AggregateSet.inline_add`) instead of called. Tumble, Hop and Session rules have one;
a Sliding rule has one when it is decided by its count alone (COUNT(*)s, no WHERE). The source
is built from the constant snippets below and slot numbers only, never rule text: field names,
the operator, its engine and helpers are values in the function's namespace, whose builtins
are empty. Nothing is executed to build it: the function's code object is taken out of the
compiled module. The shard loop runs a fast path's statements in place of calling it
(:func:`inline`), with the same effects.
"""

from __future__ import annotations

import ast
import weakref
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from streamproc.records import Record, pos_of
from streamproc.windows.aggregates import TIME, AggregateSet, function_of
from streamproc.windows.base import WindowResult
from streamproc.windows.eventtime import MAX_EVENT_TIME_MS
from streamproc.windows.sessions import KeySession

if TYPE_CHECKING:
    from streamproc.windows.operator import WindowOperator
    from streamproc.windows.panes import PaneEngine
    from streamproc.windows.sessions import SessionEngine
    from streamproc.windows.sliding import SlidingEngine

__all__ = [
    "LOOP_PARAMETERS",
    "NO_FLOOR",
    "Handler",
    "inline",
    "pane_handler",
    "session_handler",
    "sliding_count_handler",
]

#: ``handle(doc, event_time_ms, record, identity)``: :meth:`WindowOperator.on_event` for a
#: record, which makes the record's position only where it keeps or compares one.
Handler = Callable[[Mapping[str, Any], int, Record, str], Sequence[WindowResult]]

_GENERAL = "GENERAL(doc, event_time_ms, POS_OF(record), identity)"

#: The operator's ``_floor`` before its first event (then max time and watermark are None):
#: past every event time the windows take, so that every event takes the general path.
NO_FLOOR = MAX_EVENT_TIME_MS + 1

# An event before the operator's latest or behind its watermark (a deadline set by advance_to
# or flush): below its floor, the greater of the two. Or one past the years the windows take
# (the general path refuses it). The general path for both.
_HEAD = f"""
def handle(doc, event_time_ms, record, identity):
    if event_time_ms < OP._floor or event_time_ms > MAX_EVENT_TIME_MS:
        return {_GENERAL}
    watermark = OP._watermark
"""
# A record WHERE filters out moves event time only (its position is made if windows close).
_WHERE = """
    if not WHERE(doc):
        return OP._time_passes(event_time_ms, record)
"""
# One top-level GROUP BY field: read directly; a value other than a string is normalized (or
# refused) by the key reader. Any other GROUP BY: the key reader.
_TOP_KEY = """
    key = doc.get(KEY_NAME)
    if key.__class__ is not str:
        key = READ_KEY(doc)
"""
_READ_KEY = """
    key = READ_KEY(doc)
"""
# The event sets a record (its time is at or after every earlier one); the state's greatest
# time is then the event's, and so is the floor (the watermark the event makes is at or before
# it). The arrival sequence only where an aggregate reads it.
_SEQ = """
    OP._seq = seq = OP._seq + 1
"""
_SETS_OP = """
    OP._max_time = OP._floor = event_time_ms
    OP._record_setter = record
"""
_SETS = f"""{_SETS_OP}\
    state[{TIME}] = event_time_ms
"""

# -- Tumble, Hop (but an early Hop) ------------------------------------------------------------
# The key's pane at the event's time must be there (the general path makes it).
_PANE_FIND = f"""
    start = event_time_ms - event_time_ms % SLIDE
    pane = PANES.get(start)
    if pane is None:
        return {_GENERAL}
    state = pane.keys.get(key)
    if state is None:
        return {_GENERAL}
"""
# An early Tumble: the event is in one window, its pane's; one HAVING check until it fires.
_PANE_EARLY = """
    out = None
    keys = FIRED.get(start)
    if keys is None or key not in keys:
        found = VALUES_FOR(key, state)
        if found is not None:
            if keys is None:
                keys = FIRED[start] = set()
            keys.add(key)
            output, values = found
            out = [
                RESULT_OF(
                    output, start, start + SIZE, values, event_time_ms, POS_OF(record), identity
                )
            ]
"""
_PANE_FINAL = """
    out = None
"""
# The watermark moves with the event; the boundary work only when it reaches what the kind
# says is due (``{due}``: a test of ``moved``, the watermark the event makes).
_TAIL = """
    moved = event_time_ms - LATENESS
    if moved > watermark:
        OP._watermark = moved
        if {due}:
            if out is None:
                out = []
            ENGINE.close_until(moved, POS_OF(record), out)
    return NONE if out is None else out
"""
# Panes: a window's end or the first pane's release.
_PANE_TAIL = _TAIL.format(
    due="(next_end := ENGINE.next_end) is None or moved >= next_end"
    " or (STARTS and STARTS[0] + LINGERS <= moved)"
)

# -- Session -----------------------------------------------------------------------------------
# The key's only session, which the event extends: its last event is at or before every later
# one, so the event joins it (and no other) exactly when it is within the gap of that last one.
_SESSION_FIND = f"""
    session = BY_KEY.get(key)
    if session.__class__ is not KEY_SESSION:
        return {_GENERAL}
    state = session.state
    if event_time_ms >= state[{TIME}] + GAP:
        return {_GENERAL}
"""
# The session stays open (its end is after the watermark); its heap entry only moves earlier.
_SESSION_END = """
    end = event_time_ms + GAP
    session.closed = False
    due = session.due
    if due is None or end < due:
        ENGINE.schedule(session, end)
    out = None
"""
_SESSION_EARLY = """
    if not session.emitted:
        out = []
        ENGINE.emit_now(session, end, event_time_ms, POS_OF(record), identity, False, out)
"""
# Sessions, sliding keys: the first deadline in the engine's heap.
_HEAP_TAIL = _TAIL.format(due="HEAP and HEAP[0][0] <= moved")

# -- Sliding, decided by the count alone -------------------------------------------------------
# The key's item times, in time order (the state is the list of them). A new key starts with
# the event; an existing one must be in the plain state (a heap entry, items, no arrival order
# kept), else the general path. Items out of every future window's reach are dropped first; the
# window is (event time - RANGE, event time]. (No arrival sequence: a count-only rule keeps none
# per item.) The HAVING verdict of each count is cached; a result fires on the edge only.
_SLIDING_COUNT = f"""
    state = BY_KEY.get(key)
    if state is None:
        state = ENGINE.start_key(key, event_time_ms)
        count = 1
    else:
        oldest = state.first
        if state.due is None or state.by_arrival is not None or oldest is None:
            return {_GENERAL}
        horizon = watermark - REACH
        if oldest <= horizon:
            PRUNE(state, horizon)
            state.append(event_time_ms)
            state.first = oldest = state[0]
        else:
            state.append(event_time_ms)
        since = event_time_ms - RANGE
        count = len(state)
        if oldest <= since:
            count -= BISECT_RIGHT(state, since)
{_SETS_OP}\
    if event_time_ms >= ENGINE.next_mark:
        ENGINE.mark(event_time_ms, POS_OF(record))
    holds = HOLDS_BY_COUNT.get(count)
    if holds is None:
        holds = ENGINE.count_holds(key, event_time_ms, count)
    out = None
    if holds and not state.previous:
        out = []
        ENGINE.fire_count(key, event_time_ms, count, POS_OF(record), identity, False, out)
    state.previous = holds
"""


def _common(operator: WindowOperator, key_name: str | None) -> tuple[list[str], dict[str, Any]]:
    """The head (checks, WHERE, key) and the names every fast path reads."""
    namespace: dict[str, Any] = {
        "__builtins__": {},
        "OP": operator,
        "GENERAL": operator.on_event,
        "POS_OF": pos_of,
        "MAX_EVENT_TIME_MS": MAX_EVENT_TIME_MS,
        "READ_KEY": operator._key,
        "KEY_NAME": key_name,
        "LATENESS": operator._lateness,
        "NONE": (),  # returned when nothing fired or closed
        "set": set,
        "str": str,  # (_TOP_KEY's class check)
    }
    source = [_HEAD]
    if operator._where is not None:
        namespace["WHERE"] = operator._where
        source.append(_WHERE)
    source.append(_READ_KEY if key_name is None else _TOP_KEY)
    return source, namespace


def _updates(aggs: AggregateSet, namespace: dict[str, Any]) -> list[str]:
    """The updates of an event that joins existing state: operator, time slot, aggregates."""
    steps, names, uses_seq = aggs.inline_add()
    namespace.update(names)
    return [_SEQ if uses_seq else "", _SETS, steps]


def pane_handler(operator: WindowOperator, engine: PaneEngine, key_name: str | None) -> Handler:
    """The fast path of a Tumble or Hop rule (not an early Hop: its event is in several open
    windows): one in-place update of the key's pane, for an early Tumble one HAVING check
    unless the window fired, and the boundary work only when the watermark reaches it."""
    source, namespace = _common(operator, key_name)
    namespace.update(
        SLIDE=engine.slide,
        SIZE=engine.size,
        PANES=engine.panes,
        STARTS=engine.starts,
        FIRED=engine.fired,
        LINGERS=engine.size + engine.keep,  # the first pane goes once the watermark is past this
        ENGINE=engine,
        VALUES_FOR=engine.ev.values_for,
        RESULT_OF=engine.ev.result,
    )
    source.append(_PANE_FIND)
    source += _updates(engine.aggs, namespace)
    source.append(_PANE_EARLY if engine.early else _PANE_FINAL)
    source.append(_PANE_TAIL)
    return _generated("".join(source), namespace)


def session_handler(
    operator: WindowOperator, engine: SessionEngine, key_name: str | None
) -> Handler:
    """The fast path of a Session rule: an event that extends its key's only session is one
    in-place update, an early check unless the session was emitted, and closing only when the
    watermark reaches the first deadline. A new key or session, a merge: the general path."""
    source, namespace = _common(operator, key_name)
    namespace.update(
        BY_KEY=engine.by_key,
        KEY_SESSION=KeySession,
        GAP=engine.gap,
        HEAP=engine.heap,
        ENGINE=engine,
    )
    source.append(_SESSION_FIND)
    source += _updates(engine.aggs, namespace)
    source.append(_SESSION_END)
    if engine.early:
        source.append(_SESSION_EARLY)
    source.append(_HEAP_TAIL)
    return _generated("".join(source), namespace)


def sliding_count_handler(
    operator: WindowOperator, engine: SlidingEngine, key_name: str | None
) -> Handler:
    """The fast path of a Sliding rule decided by its count alone (every aggregate a COUNT(*),
    no WHERE; the caller checks): an on-time event of a new key, or of a key in the plain
    state, is an append, a bisection where items fell out of the window, and the cached HAVING
    verdict of the count."""
    holds_by_count = engine.holds_by_count
    if holds_by_count is None or operator._where is not None:
        raise ValueError(f"rule {operator._name!r} is not decided by its count alone")
    source, namespace = _common(operator, key_name)
    namespace.update(
        BY_KEY=engine.by_key,
        REACH=engine.reach,
        RANGE=engine.range_ms,
        PRUNE=engine.prune,
        BISECT_RIGHT=bisect_right,
        HOLDS_BY_COUNT=holds_by_count,
        HEAP=engine.heap,
        ENGINE=engine,
        len=len,
    )
    source.append(_SLIDING_COUNT)
    source.append(_HEAP_TAIL)
    return _generated("".join(source), namespace)


# -- the same steps written into the shard loop ------------------------------------------------
# The source each generated fast path was compiled from, for the shard loop to take its steps
# in place of a call (a handler's frame and its call cost more than a simple step). Weak: an
# entry goes with its function.
_SOURCES: weakref.WeakKeyDictionary[Callable[..., Any], str] = weakref.WeakKeyDictionary()

#: The shard loop's names for a handler's parameters (doc, event_time_ms, record, identity).
LOOP_PARAMETERS = ("doc", "event_ms", "record", "identity")


def _generated(source: str, namespace: dict[str, Any]) -> Handler:
    handle = cast(Handler, function_of(source, namespace, "handle", "<window fast path>"))
    _SOURCES[handle] = source
    return handle


def inline(handler: Handler, suffix: str, target: str) -> tuple[str, dict[str, Any]] | None:
    """``handler``'s steps as statements for the shard loop to run in place of calling it, and
    the values their names stand for; None if it is not a generated fast path.

    The parameters take the loop's names (:data:`LOOP_PARAMETERS`); every other name, local or
    from the function's namespace, ends in ``_{suffix}``, so the steps of several handlers and
    the loop's own names never meet. ``return X`` becomes ``{target} = X``, the statements after
    a branch that may return go into each branch that does not, and a path that ends without a
    return sets ``target`` to None: on every path the statements set ``target`` to what the
    call would have returned, and make the same changes. (Text of our snippets and numbers
    only, as the function's source is.)"""
    source = _SOURCES.get(handler)
    if source is None:
        return None
    (function,) = ast.parse(source).body
    if not isinstance(function, ast.FunctionDef) or any(
        isinstance(node, _SCOPED) for node in ast.walk(ast.Module(function.body, []))
    ):
        return None  # (a nested scope's names and returns are not the handler's)
    parameters = [argument.arg for argument in function.args.args]
    mapping = dict(zip(parameters, LOOP_PARAMETERS, strict=True))
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id not in mapping:
            mapping[node.id] = f"{node.id}_{suffix}"
    if target in mapping.values():
        raise ValueError(f"the target {target!r} is one of the handler's names")
    renamed = _Rename(mapping).visit(ast.Module(function.body, []))
    try:
        body = _without_returns(renamed.body, target)
    except _Unsupported:
        return None
    module = ast.fix_missing_locations(ast.Module(body, []))
    namespace = handler.__globals__
    names = {mapping[name]: value for name, value in namespace.items() if name in mapping}
    return ast.unparse(module), names


# Statements that open or reach another scope, or suspend: never in our snippets; a handler
# holding one is called, not written in.
_SCOPED = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.Global,
    ast.Nonlocal,
    ast.Yield,
    ast.YieldFrom,
    ast.Await,
)


class _Unsupported(Exception):
    """A return where the rewrite does not go (in a loop, a with or a try)."""


class _Rename(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]) -> None:
        self._mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.copy_location(ast.Name(self._mapping[node.id], node.ctx), node)


def _without_returns(statements: list[ast.stmt], target: str) -> list[ast.stmt]:
    """``statements`` (the rest of a function from some point on) with every return made an
    assignment to ``target``: see :func:`inline`."""
    out: list[ast.stmt] = []
    for index, statement in enumerate(statements):
        if isinstance(statement, ast.Return):
            value = statement.value if statement.value is not None else ast.Constant(None)
            out.append(ast.Assign([ast.Name(target, ast.Store())], value))
            return out
        if _returns(statement):
            if not isinstance(statement, ast.If):
                raise _Unsupported
            rest = statements[index + 1 :]
            body = _without_returns(statement.body + rest, target)
            orelse = _without_returns(statement.orelse + rest, target)
            out.append(ast.If(statement.test, body, orelse))
            return out
        out.append(statement)
    out.append(ast.Assign([ast.Name(target, ast.Store())], ast.Constant(None)))
    return out


def _returns(statement: ast.stmt) -> bool:
    return any(isinstance(node, ast.Return) for node in ast.walk(statement))
