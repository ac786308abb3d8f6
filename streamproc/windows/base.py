"""What every window kind shares: results, the late-event error, keys, HAVING and output.

The engines (:mod:`.panes`, :mod:`.sessions`, :mod:`.sliding`) implement :class:`Engine`;
:class:`~streamproc.windows.operator.WindowOperator` owns event time and calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamproc.errors import MissingFieldError, RecordError, RuleCompileError
from streamproc.records import Pos, quick_init
from streamproc.sql_runtime import field_getter
from streamproc.windows.aggregates import TIME, AggregateSet, State
from streamproc.windows.eventtime import format_event_time
from streamproc.windowspec import WindowRule

__all__ = ["Engine", "Evaluator", "KeyReader", "LateEvent", "WindowResult"]


@quick_init
@dataclass(frozen=True, slots=True)
class WindowResult:
    """One output of a window rule: a key's window (or, for Sliding, one event's range).

    The window is ``[window_start_ms, window_end_ms)``; a Sliding result covers the range
    ``(t - range, t]`` of its event at ``t``, written the same half-open way:
    ``[t - range + 1, t + 1)``. ``values`` maps each ``rule.select`` column to its value.
    ``event_time_ms`` is the greatest event time in the window for a final result, and the time
    of the triggering event for early, sliding and correction results. ``trigger`` is the
    position of the record whose processing produced the result (None from ``advance_to`` and
    ``flush``); ``trigger_identity`` is that record's identity for early, sliding and correction
    results as the caller gave it (the shard loop gives None until an alert needs it, and then
    passes it to ``WindowSet.add_alerts``), None for final ones. ``correction`` marks a result
    that revises a window which was already closed (see the package docstring).
    """

    rule: WindowRule
    key: tuple[Any, ...]
    window_start_ms: int
    window_end_ms: int
    values: dict[str, Any]
    event_time_ms: int
    trigger: Pos | None
    trigger_identity: str | None
    correction: bool = False


class LateEvent(RecordError):
    """An event behind the watermark that the rule cannot take: dead-letter it (reason says why).

    Raised by ``WindowOperator.on_event`` before any state changes; the operator is unchanged.
    """

    def __init__(self, rule: str, event_time_ms: int, watermark_ms: int, retention_ms: int) -> None:
        reason = (
            f"late event: event time {format_event_time(event_time_ms)} is behind the watermark "
            f"{format_event_time(watermark_ms)} of rule {rule}"
        )
        if retention_ms:
            reason += f" by more than the {retention_ms} ms kept for corrections"
        super().__init__(reason)
        self.rule = rule
        self.event_time_ms = event_time_ms
        self.watermark_ms = watermark_ms


class _BoolKey:
    """A boolean inside a key: hashes apart from 1 and 0, which Python's True/False do not."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_TRUE, _FALSE = _BoolKey(True), _BoolKey(False)
_VERDICTS_KEPT = 4096


class KeyReader:
    """Reads the GROUP BY values of a record into an internal dict key, and back.

    Internal keys: ``()`` without GROUP BY, the value itself for one field, a tuple for more.
    Values must be JSON scalars (string, number, boolean, null); an integral float is the int
    (1.0 and 1 are one group), a boolean is its own group (``true`` is not ``1``). A list or an
    object raises RecordError; a missing field raises MissingFieldError.
    """

    __slots__ = ("_getters", "_paths")

    def __init__(self, group_by: tuple[str, ...]) -> None:
        self._paths = group_by
        self._getters = tuple(field_getter(path) for path in group_by)

    @property
    def read(self) -> Callable[[Mapping[str, Any]], Hashable]:
        """``read(doc)``: the record's internal key. Take it once and keep it (the reader does
        not keep it: it would hold itself, a cycle)."""
        group_by = self._paths
        if not group_by:
            return _no_key
        if len(group_by) == 1:
            return self._read_top if "." not in group_by[0] else self._read_one
        return self._read_many

    def _read_one(self, doc: Mapping[str, Any]) -> Hashable:
        value = self._getters[0](doc)
        kind = type(value)
        if kind is str or kind is int:
            return value  # type: ignore[no-any-return]
        return _normalize(value, self._paths[0])

    def _read_top(self, doc: Mapping[str, Any]) -> Hashable:
        # _read_one for a top-level field, without the getter's call (same errors)
        try:
            value = doc[self._paths[0]]
        except (KeyError, TypeError):
            raise MissingFieldError(self._paths[0]) from None
        kind = type(value)
        if kind is str or kind is int:
            return value  # type: ignore[no-any-return]
        return _normalize(value, self._paths[0])

    def _read_many(self, doc: Mapping[str, Any]) -> Hashable:
        values = []
        for getter, path in zip(self._getters, self._paths, strict=True):
            value = getter(doc)
            kind = type(value)
            values.append(value if kind is str or kind is int else _normalize(value, path))
        return tuple(values)

    def output(self, key: Hashable) -> tuple[Any, ...]:
        """The key as the result shows it: group-by values in group-by order."""
        if len(self._paths) == 1:
            return (_plain(key),)
        parts: tuple[Any, ...] = key  # type: ignore[assignment]  # () or a tuple: see read
        return tuple([_plain(value) for value in parts])


def _no_key(doc: Mapping[str, Any]) -> Hashable:
    return ()


def _normalize(value: Any, path: str) -> Hashable:
    kind = type(value)
    if value is None or kind is str or kind is int:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is float:
        return int(value) if value.is_integer() else value
    names: dict[type, str] = {list: "a list", dict: "an object"}
    name = names.get(kind, f"a {kind.__name__}")
    raise RecordError(
        f"group-by field {path!r} holds {name}: group by fields holding a string, "
        "number, boolean or null"
    )


def _plain(value: Any) -> Any:
    return value.value if type(value) is _BoolKey else value


class Evaluator:
    """Turns a state into HAVING's input and the selected values."""

    __slots__ = (
        "_finish",
        "_group_by",
        "_having",
        "_picks",
        "_scope_names",
        "_verdicts",
        "aggregates",
        "having_ignores_key",
        "keys",
        "rule",
    )

    def __init__(self, rule: WindowRule, aggregates: AggregateSet, keys: KeyReader) -> None:
        self.rule = rule
        self.aggregates = aggregates
        self.keys = keys
        self._group_by = rule.group_by
        self._having = rule.having
        # HAVING's input: group-by paths, then every aggregate by name, then by alias
        self._scope_names = (
            *rule.group_by,
            *(a.name for a in rule.aggregates),
            *(a.alias for a in rule.aggregates),
        )
        self._finish = aggregates.finish
        #: Whether HAVING reads aggregates only (not a GROUP BY field): the same aggregates then
        #: always give the same verdict, whatever the key.
        self.having_ignores_key = rule.having is None or (
            rule.having_reads is not None and not rule.having_reads & set(rule.group_by)
        )
        # HAVING's verdict per tuple of counts, for rules whose aggregates are all counts (whole
        # numbers) and whose HAVING reads nothing else: an early rule checks it after every
        # event, and most checks repeat a verdict already known. Bounded: cleared when full.
        counts_only = all(a.function in ("count", "count_distinct") for a in rule.aggregates)
        self._verdicts: dict[tuple[Any, ...], bool] | None = (
            {} if rule.having is not None and counts_only and self.having_ignores_key else None
        )
        # Where each name of HAVING's scope takes its value in (*key, *finished): GROUP BY
        # fields, then aggregates by name and by alias (a later name wins, as in the scope).
        index: dict[str, int] = {}
        for position, name in enumerate(rule.group_by):
            index[name] = position
        for position, aggregate in enumerate(rule.aggregates, start=len(rule.group_by)):
            index[aggregate.name] = position
        for position, aggregate in enumerate(rule.aggregates, start=len(rule.group_by)):
            index[aggregate.alias] = position
        if unknown := [column for column in rule.select if column not in index]:
            raise RuleCompileError(
                f"SELECT column {unknown[0]!r} is neither a GROUP BY field nor an aggregate",
                rule=rule.name,
                hint="select the GROUP BY fields and aggregates",
            )
        #: (column, index in (*key, *finished)) of every SELECT column, in order.
        self._picks = tuple((column, index[column]) for column in rule.select)

    def values(self, key: tuple[Any, ...], state: State) -> dict[str, Any] | None:
        """The selected values if HAVING holds for ``state`` of ``key`` (output form), else None."""
        return self.values_of(key, self._finish(state))

    def values_for(
        self, key: Hashable, state: State
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """(``key`` in output form, the selected values) if HAVING holds for ``state`` of
        ``key`` (as the engine keeps it), else None. When a remembered verdict says HAVING
        fails (most checks of an early rule), the key is not even put in output form."""
        finished = self._finish(state)
        verdicts = self._verdicts
        if verdicts is not None and verdicts.get(tuple(finished)) is False:
            return None
        output = self.keys.output(key)
        values = self.values_of(output, finished)
        return None if values is None else (output, values)

    def values_of(self, key: tuple[Any, ...], finished: Sequence[Any]) -> dict[str, Any] | None:
        """:meth:`values` from the aggregates' output values (``finish(state)``)."""
        verdicts = self._verdicts
        having = self._having
        if verdicts is not None:  # (kept only for rules with a HAVING)
            counts = tuple(finished)
            known = verdicts.get(counts)
            if known is False:
                return None
            if known is None:
                scope = dict(zip(self._scope_names, (*key, *finished, *finished)))  # noqa: B905
                if len(verdicts) >= _VERDICTS_KEPT:
                    verdicts.clear()
                known = verdicts[counts] = bool(having(scope))  # type: ignore[misc]
                if not known:
                    return None
        elif having is not None:
            scope = dict(zip(self._scope_names, (*key, *finished, *finished)))  # noqa: B905
            if not having(scope):
                return None
        # HAVING holds (or there is none): the selected values, picked from key and aggregates
        row = (*key, *finished)
        return {column: row[at] for column, at in self._picks}

    def result(
        self,
        key: tuple[Any, ...],
        start: int,
        end: int,
        values: dict[str, Any],
        event_time: int,
        trigger: Pos | None,
        identity: str | None,
        correction: bool = False,
    ) -> WindowResult:
        return WindowResult(
            self.rule, key, start, end, values, event_time, trigger, identity, correction
        )

    def final_time(self, state: State) -> int:
        return int(state[TIME])


class Engine(Protocol):
    """The logic of one window kind over one shard. Called only by the operator.

    ``watermark`` is the watermark *before* the event (None: no event yet); ``late`` tells that
    the event is behind it (accepted for correction). ``rs`` is the record-setter position to
    stamp new state with (see the operator), ``rs_time`` its event time (the greatest so far).
    Results go to ``out`` in the documented order.
    """

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
    ) -> None: ...

    def close_until(self, watermark: int, trigger: Pos | None, out: list[WindowResult]) -> None: ...

    def release_watermark(self) -> int | None:
        """The watermark at which all state held now is released (None: nothing held)."""
        ...

    def drop_all(self) -> None: ...

    def oldest_rs(self) -> Pos | None: ...

    def state_size(self) -> tuple[int, int]: ...
