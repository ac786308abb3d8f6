"""One generated function per shard processor: the per-record loop for its rule set's shape.

A general loop pays, for every record, for what the rule set *might* hold: a loop over the
condition rules, a loop over the window rules' time fields and over the rules of each, a loop
over the model and inventory rules, and a check of each list on the way. :func:`compile_loop`
writes the loop out for the rule set at hand instead: each condition, each time field's parse,
each window handler and each stateful rule is a straight-line step that calls its function
directly (a window rule's generated fast path is written in, not called: see ``inlined``), and
the steps a rule set does not need are not there.

The generated source is made of this module's templates and identifiers numbered by position
(``c0``, ``h2``, ``s1``); everything a rule brings (names, field names, functions) is a value in
the function's namespace, never text in its source: the same guarantee as the SQL compiler's.
It is compiled once per processor; nothing is executed but the function itself. Read the source
of a processor's loop with :attr:`ShardLoop.source`.
"""

from __future__ import annotations

import textwrap
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamproc.records import Record

__all__ = ["LoopShape", "ShardLoop", "compile_loop"]

#: ``loop(records, alerts, dead, matches) -> records refused as undecodable``
LoopFunction = Callable[[Sequence[Record], list[Any], list[Any], list[int]], int]


@dataclass(frozen=True, slots=True)
class LoopShape:
    """What the loop is made of: how many of each step, in the rule set's order.

    ``conditions``: how many condition rules; ``fused``: whether one generated function tests
    them all (else each is called in turn). ``runs``: per run of window rules reading one time
    field, whether the field is read from the record (False: the arrival time), whether a
    top-level name is tried first, and the indices of its rules. ``stateful``: how many model
    and inventory rules. ``skew``: whether event times far ahead of arrival are refused.
    ``inlined``: (index, statements) of the window rules whose generated fast path the loop
    runs in place of calling it (:func:`streamproc.windows.fastpaths.inline`: our snippets'
    text, its names numbered); the others are called.
    """

    conditions: int
    fused: bool
    runs: tuple[tuple[bool, bool, tuple[int, ...]], ...]
    stateful: int
    skew: bool
    inlined: tuple[tuple[int, str], ...] = ()

    @property
    def per_record_state(self) -> bool:
        return bool(self.runs) or self.stateful > 0


@dataclass(frozen=True, slots=True)
class ShardLoop:
    """A compiled loop and the source it was compiled from."""

    function: LoopFunction
    source: str


# The templates. {placeholders} are filled with numbers and with other templates only.
_HEAD = """\
def _loop(records, alerts, dead, matches):
    undecodable = 0
    for record in records:
        data = record.data
        try:
            doc = loads(data) if len(data) <= MAX_BYTES else None
        except Exception:  # the slow path below says why
            doc = None
        # (doc is None if the record is over MAX_BYTES: loads never saw it). A flat object
        # (no "[", no "{" after its first byte: two memchr scans) is never too deep; anything
        # else takes the count (slower) and maybe the walk.
        if doc.__class__ is not dict or (
            (91 in data or data.find(123, 1) >= 0 or MAX_DEPTH < 1)
            and data.count(b"{") + data.count(b"[") > MAX_DEPTH
        ):
            doc = decode_or_reason(data, LIMITS)
            if doc.__class__ is str:
                dead.append(dead_letter(record, doc))
                undecodable += 1
                continue
        identity = None
"""
# A condition rule called on its own: TRUE makes its alert; an exception, its dead letter.
_CONDITION = """\
        try:
            hit = c{i}(doc)
        except Exception as exc:
            condition_failed({i}, exc, record, dead)
        else:
            if hit:
                identity = matched({i}, doc, record, identity, alerts, dead, matches)
"""
# Every condition in one generated function; if it raises, each condition on its own says which.
_FUSED = """\
        try:
            hits = fused(doc)
        except Exception:
            hits = None
        if hits is None:
            identity = each_condition(doc, record, identity, alerts, dead, matches)
        else:
            for index in hits:
                identity = matched(index, doc, record, identity, alerts, dead, matches)
"""
# A run of window rules reading one time field: the time parsed once, then each rule's handler.
_RUN_TIME = """\
        try:
{read}{skew}\
        except RecordError as exc:
            run_refused({r}, exc, record, dead)
        else:
{handlers}\
"""
# A top-level field is read directly; the getter says why one is missing.
_READ_TOP = """\
            value = doc.get(T{r})
            event_ms = parse_event_time(time{r}(doc) if value is None else value)
"""
_READ_PATH = """\
            event_ms = parse_event_time(time{r}(doc))
"""
_SKEW = """\
            arrival = record.arrival_ms
            if arrival and event_ms > arrival + SKEW:
                raise skewed(event_ms, arrival)
"""
_RUN_ARRIVAL = """\
        event_ms = record.arrival_ms
        if True:
{handlers}\
"""
# A window rule's step: its handler called (_CALL), or its fast path's statements written in.
# The record's identity (for alert ids) is made only once an alert needs it: until then it is
# None, which handlers and stateful rules take as "not made yet" (add_alerts fills it in).
_CALL = """\
                results = h{i}(doc, event_ms, record, identity)
"""
_HANDLER = """\
            try:
{steps}\
            except RecordError as exc:
                window_refused({i}, exc, record, dead)
            else:
                if results:
                    if identity is None:
                        identity = identify(doc, IDENTITY_FIELD, record)
                    add_alerts(
                        {i}, results, record.shard_id, pos_of(record), alerts,
                        record.sequence_number, identity,
                    )
"""
_STATEFUL = """\
        try:
            refused = s{j}(doc, record, identity, False)
        except Exception as exc:  # bad data must not stop the shard
            refused = stateful_raised({j}, exc)
        if refused is not None:
            dead.append(dead_letter(record, refused, S{j}))
"""
_TAIL = """\
    return undecodable
"""


def loop_source(shape: LoopShape) -> str:
    """The loop's Python source for ``shape`` (numbers and templates only)."""
    inlined = dict(shape.inlined)

    def handler(i: int) -> str:
        statements = inlined.get(i)
        if statements is None:
            steps = _CALL.format(i=i)
        else:
            steps = textwrap.indent(statements + "\n", " " * 16)
        return _HANDLER.format(i=i, steps=steps)

    parts = [_HEAD]
    if shape.fused:
        parts.append(_FUSED)
    else:
        parts += [_CONDITION.format(i=i) for i in range(shape.conditions)]
    if shape.per_record_state:
        for r, (reads_field, top, indices) in enumerate(shape.runs):
            handlers = "".join(handler(i) for i in indices)
            if reads_field:
                read = (_READ_TOP if top else _READ_PATH).format(r=r)
                skew = _SKEW if shape.skew else ""
                parts.append(_RUN_TIME.format(r=r, read=read, skew=skew, handlers=handlers))
            else:
                parts.append(_RUN_ARRIVAL.format(handlers=handlers))
        parts += [_STATEFUL.format(j=j) for j in range(shape.stateful)]
    parts.append(_TAIL)
    return "".join(parts)


def compile_loop(shape: LoopShape, namespace: dict[str, Any]) -> ShardLoop:
    """The loop for ``shape``, bound to ``namespace``: the values its names stand for (the
    caller's functions and constants; see :func:`loop_source` for the names)."""
    source = loop_source(shape)
    code = compile(source, "<shard loop>", "exec", dont_inherit=True)
    # Nothing is executed: the function's code object is taken out of the compiled module and
    # bound to the namespace (builtins: only what the templates call).
    (function_code,) = (c for c in code.co_consts if isinstance(c, types.CodeType))
    builtins = {
        "Exception": Exception,
        "dict": dict,
        "int": int,
        "len": len,
        "list": list,
        "str": str,
    }
    scope = {**namespace, "__builtins__": builtins}
    function = types.FunctionType(function_code, scope, "_loop")
    return ShardLoop(function, source)
