"""Rules: the Rule value, the declaration API for rule modules, and loading rule modules by path.

A rule module is a plain Python file (``rules/fraud.py`` is the example users copy; windowed
rules: ``rules/velocity.py``) that binds rules to module-level names::

    from streamproc import predicate_rule, rule, window_rule

    high_value = rule(
        name="high_value_out_of_state",
        condition="amount > 2000 AND state <> home_state",  # SQL, see streamproc.sql
        select=["tx_id", "amount"],
        key="card_id",
        severity="HIGH",
    )

    @predicate_rule(name="round_amount", select=["tx_id"])
    def round_amount(tx):  # a Python predicate: tx is the record mapping
        return tx["amount"] % 100 == 0

    velocity = window_rule(name="velocity", emit="early", sql="SELECT card_id, COUNT(*) "
        "FROM tx GROUP BY card_id, SLIDING(event_time, INTERVAL '10' MINUTE) HAVING COUNT(*) > 5")

Every mistake a rule author can make is a :class:`RuleCompileError` at load time, carrying the
rule module's file and line (and, for an SQL condition, the column of the offending token).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.machinery
import importlib.util
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from streamproc.errors import MissingFieldError, RuleCompileError
from streamproc.records import SEVERITIES, Severity
from streamproc.sql import (
    CompiledCondition,
    FusedConditions,
    compile_condition,
    field_getter,
    fuse_conditions,
)
from streamproc.stateful import StatefulRuleSpec
from streamproc.windowspec import EmitMode, LatePolicy, WindowRule
from streamproc.windowsql import compile_window_sql

__all__ = ["Rule", "RuleSet", "load_rules", "predicate_rule", "rule", "window_rule"]

Condition = Callable[[Mapping[str, Any]], bool]
Getter = Callable[[Mapping[str, Any]], Any]
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_NAME_HINT = "lower-case letters, digits and '_', starting with a letter, e.g. high_value_card"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: when ``condition(record)`` is true, an alert with ``extract(record)`` is due.

    ``name`` is unique in a rule set and, with ``version``, part of every alert id: bump the
    version when the meaning of the rule changes. ``sinks`` names the sinks an alert goes to (empty
    means every configured sink). ``condition`` may raise MissingFieldError (or, for Python
    predicates, anything); the processor dead-letters the record. ``condition_fields`` are the
    dotted paths an SQL condition reads (None for a Python predicate: unknown). Construction
    validates every field and raises RuleCompileError located at ``origin`` ("file.py:LINE").
    """

    name: str
    version: int
    condition: Condition
    select: tuple[str, ...]
    sinks: tuple[str, ...]
    severity: Severity = "MEDIUM"
    key: str | None = None
    description: str = ""
    condition_text: str | None = None
    origin: str = ""
    condition_fields: frozenset[str] | None = None
    # What the SQL condition compiled to (None for a Python predicate): fused with the other
    # rules' conditions by RuleSet.fused_conditions.
    compiled: CompiledCondition | None = field(default=None, repr=False, compare=False)
    _selectors: tuple[tuple[str, Getter], ...] = field(init=False, repr=False, compare=False)
    _key_getter: Getter | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def fail(message: str, hint: str | None = None) -> RuleCompileError:
            file, line = _split_origin(self.origin)
            return RuleCompileError(message, file=file, line=line, rule=rule_name, hint=hint)

        rule_name = self.name if isinstance(self.name, str) else None
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise fail(f"invalid rule name {self.name!r}", _NAME_HINT)
        if type(self.version) is not int or self.version < 1:
            raise fail(
                f"version must be an integer >= 1, got {self.version!r}",
                "bump the version when the rule's meaning changes: it is part of the alert id",
            )
        if self.severity not in SEVERITIES:
            raise fail(f"unknown severity {self.severity!r}", f"use one of {', '.join(SEVERITIES)}")
        if not callable(self.condition):
            raise fail(f"condition must be SQL text or a callable, got {self.condition!r}")
        for attribute in ("select", "sinks"):  # accept lists; a bare string is a mistake
            value = getattr(self, attribute)
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise fail(f"{attribute} must be a list of strings, got {value!r}")
            object.__setattr__(self, attribute, tuple(value))
        if any(not sink for sink in self.sinks):
            raise fail("sink names must not be empty")
        if not isinstance(self.description, str):
            raise fail("description must be a string")
        try:
            selectors = tuple((path, field_getter(path)) for path in self.select)
            key_getter = None if self.key is None else field_getter(self.key)
        except RuleCompileError as error:
            raise fail(error.message, error.hint) from None
        object.__setattr__(self, "_selectors", selectors)
        object.__setattr__(self, "_key_getter", key_getter)

    def extract(self, doc: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """The alert key and payload fields of a matching record.

        The key is the ``key`` field's value as text (None if there is no key field or its value
        is null; strings as is, other JSON values as compact JSON, e.g. ``true``, ``42``); the
        fields map each ``select`` path to its value. Raises MissingFieldError for a missing path.
        """
        key = None if self._key_getter is None else _key_text(self._key_getter(doc))
        return key, {path: get(doc) for path, get in self._selectors}

    @property
    def fields(self) -> frozenset[str] | None:
        """Every dotted path the rule reads, or None if a Python predicate makes it unknown."""
        if self.condition_fields is None:
            return None
        return self.condition_fields | set(self.select) | ({self.key} if self.key else set())


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of a deployment in load order: condition rules (``rules``; iterating yields
    them) and window rules (``window_rules``); ``len`` counts both. Names are unique across both
    kinds (checked on construction)."""

    rules: tuple[Rule, ...]
    window_rules: tuple[WindowRule, ...] = ()
    # Model and inventory rules (streamproc.stateful): per-shard state, decided per batch.
    stateful_rules: tuple[StatefulRuleSpec, ...] = ()
    _by_name: dict[str, Rule | WindowRule | StatefulRuleSpec] = field(
        init=False, repr=False, compare=False
    )
    _fused: list[FusedConditions | None] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_name: dict[str, Rule | WindowRule | StatefulRuleSpec] = {}
        items: tuple[Rule | WindowRule | StatefulRuleSpec, ...] = (
            *self.rules,
            *self.window_rules,
            *self.stateful_rules,
        )
        for item in items:
            if (first := by_name.get(item.name)) is not None:
                file, line = _split_origin(item.origin)
                raise RuleCompileError(
                    f"duplicate rule name {item.name!r}: declared at {first.origin or '?'} "
                    f"and at {item.origin or '?'}",
                    file=file,
                    line=line,
                    rule=item.name,
                    hint="rule names must be unique across all loaded rule files; rename one",
                )
            by_name[item.name] = item
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "window_rules", tuple(self.window_rules))
        object.__setattr__(self, "stateful_rules", tuple(self.stateful_rules))
        object.__setattr__(self, "_by_name", by_name)

    def __len__(self) -> int:
        return len(self.rules) + len(self.window_rules) + len(self.stateful_rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def fused_conditions(self) -> FusedConditions | None:
        """Every condition in one generated function (:func:`streamproc.sql.fuse_conditions`),
        made once per rule set; None with fewer than two rules or a Python predicate among them."""
        if not self._fused:
            self._fused.append(_fuse(self.rules))
        return self._fused[0]

    def by_name(self, name: str) -> Rule:
        """The condition rule called ``name``; KeyError if there is none."""
        if isinstance(found := self._by_name.get(name), Rule):
            return found
        raise self._unknown(name, Rule)

    def window_by_name(self, name: str) -> WindowRule:
        """The window rule called ``name``; KeyError if there is none."""
        if isinstance(found := self._by_name.get(name), WindowRule):
            return found
        raise self._unknown(name, WindowRule)

    def stateful_by_name(self, name: str) -> StatefulRuleSpec:
        """The model or inventory rule called ``name``; KeyError if there is none."""
        if isinstance(found := self._by_name.get(name), StatefulRuleSpec):
            return found
        known = sorted(n for n, i in self._by_name.items() if isinstance(i, StatefulRuleSpec))
        raise KeyError(f"no model or inventory rule named {name!r}; known: {known}")

    def _unknown(self, name: str, kind: type[Rule | WindowRule]) -> KeyError:
        known = sorted(n for n, item in self._by_name.items() if isinstance(item, kind))
        what = "window rule" if kind is WindowRule else "rule"
        return KeyError(f"no {what} named {name!r}; known: {known}")

    @property
    def fields(self) -> frozenset[str] | None:
        """Union of the rules' fields, or None if any rule's fields are unknown (always when there
        are window rules: a WindowRule does not record the fields its WHERE reads)."""
        if self.window_rules or self.stateful_rules:
            return None
        result: set[str] = set()
        for item in self.rules:
            if (fields := item.fields) is None:
                return None
            result |= fields
        return frozenset(result)


def rule(
    *,
    name: str,
    condition: str | Callable[[Mapping[str, Any]], object],
    select: Sequence[str] = (),
    key: str | None = None,
    version: int = 1,
    severity: Severity = "MEDIUM",
    sinks: Sequence[str] = (),
    description: str = "",
) -> Rule:
    """Declare a rule in a rule module; bind the result to a module-level name.

    ``condition`` is SQL text (compiled now, see :mod:`streamproc.sql`) or a Python predicate
    taking the record mapping and returning something truthy; a ``KeyError`` it raises is
    reported as a missing field. Raises RuleCompileError pointing at this call in the rule
    module; for SQL errors at the offending token when the condition is a plain string literal.
    """
    caller = sys._getframe(1)
    file, line = caller.f_code.co_filename, caller.f_lineno
    compiled: CompiledCondition | None = None
    if isinstance(condition, str):
        try:
            compiled = compile_condition(condition, rule=name if isinstance(name, str) else None)
        except RuleCompileError as error:
            raise _in_module(error, file, line, condition) from None
        predicate = compiled.fn
    elif callable(condition):
        predicate = _wrap_predicate(condition)
    else:
        raise RuleCompileError(
            f"condition must be SQL text or a callable, got {condition!r}",
            file=file,
            line=line,
            rule=name if isinstance(name, str) else None,
        )
    origin = f"{file}:{line}"
    return _make(
        name,
        predicate,
        select,
        key,
        version,
        severity,
        sinks,
        description,
        origin,
        compiled,
    )


def predicate_rule(
    *,
    name: str,
    select: Sequence[str] = (),
    key: str | None = None,
    version: int = 1,
    severity: Severity = "MEDIUM",
    sinks: Sequence[str] = (),
    description: str | None = None,
) -> Callable[[Callable[[Mapping[str, Any]], object]], Rule]:
    """Decorator form of :func:`rule` for a Python predicate; the decorated name becomes the Rule.

    ``description`` defaults to the function's docstring.
    """
    caller = sys._getframe(1)
    origin = f"{caller.f_code.co_filename}:{caller.f_lineno}"

    def declare(function: Callable[[Mapping[str, Any]], object]) -> Rule:
        about = " ".join((function.__doc__ or "").split()) if description is None else description
        predicate = _wrap_predicate(function)
        return _make(name, predicate, select, key, version, severity, sinks, about, origin)

    return declare


def window_rule(
    *,
    name: str,
    sql: str,
    version: int = 1,
    emit: EmitMode = "final",
    allowed_lateness: timedelta = timedelta(0),
    late: LatePolicy = "dead_letter",
    severity: Severity = "MEDIUM",
    sinks: Sequence[str] = (),
    description: str = "",
) -> WindowRule:
    """Declare a windowed SQL rule (grammar: :mod:`streamproc.windowsql`, compiled now); bind
    the result to a module-level name. ``emit``: ``"final"`` (when a window closes) or ``"early"``
    (once, when HAVING first holds). ``allowed_lateness`` is a ``datetime.timedelta`` (whole
    milliseconds); events later than that are ``late``: ``"dead_letter"`` or ``"correction"``.
    Raises RuleCompileError pointing at this call; at the offending token when ``sql`` is a
    plain string literal."""
    caller = sys._getframe(1)
    file, line = caller.f_code.co_filename, caller.f_lineno
    label, ms = name if isinstance(name, str) else None, timedelta(milliseconds=1)
    lateness = allowed_lateness if isinstance(allowed_lateness, timedelta) else None
    if lateness is None or lateness < timedelta(0) or lateness % ms:
        message = f"allowed_lateness must be whole milliseconds >= 0, got {allowed_lateness!r}"
        hint = "a datetime.timedelta, e.g. allowed_lateness=timedelta(minutes=1)"
        raise RuleCompileError(message, file=file, line=line, rule=label, hint=hint)
    try:
        return compile_window_sql(
            sql,
            origin=f"{file}:{line}",
            rule=label,
            name=name,
            version=version,
            emit=emit,
            allowed_lateness_ms=lateness // ms,
            late=late,
            severity=severity,
            sinks=sinks,
            description=description,
        )
    except RuleCompileError as error:
        text = sql if isinstance(sql, str) else ""
        raise _in_module(error, file, line, text, keyword="sql") from None


def load_rules(paths: Sequence[str | Path]) -> RuleSet:
    """Load the rules declared in rule modules.

    Each path is a ``.py`` file or a directory (its ``*.py`` files not starting with ``_``, in
    name order, not recursive). Each file is executed as a fresh module under a private name
    (``streamproc_rules.<stem>_<hash>``, so the ``rules/`` folder needs no ``__init__.py`` and
    never shadows anything), without writing bytecode caches. Module-level attributes that are
    Rules or WindowRules are collected in definition order. Raises RuleCompileError naming the
    file (and line, column for Python syntax errors) for any failure, for duplicate names, and if
    no rule is found.
    """
    entries = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            files.extend(
                sorted(
                    (p for p in entry.glob("*.py") if not p.name.startswith("_")),
                    key=lambda p: p.name,
                )
            )
        elif entry.is_file() and entry.suffix == ".py":
            files.append(entry)
        else:
            problem = "is not a .py file or a directory" if entry.exists() else "does not exist"
            raise RuleCompileError(f"rule path {problem}", file=str(entry))
    loaded: dict[Path, None] = {}  # a file named twice (a directory and itself) loads once
    rules: list[Rule | WindowRule | StatefulRuleSpec] = []
    for file in files:
        if file.resolve() not in loaded:
            loaded[file.resolve()] = None
            rules.extend(_load_module(file))
    if not rules:
        raise RuleCompileError(
            f"no rules found in {', '.join(str(e) for e in entries) or 'no paths'}",
            hint="bind rules to module-level names in a .py file, e.g. "
            "big = rule(name='big', condition='amount > 1000', select=['tx_id'])",
        )
    conditions = tuple(item for item in rules if isinstance(item, Rule))
    return RuleSet(
        conditions,
        tuple(item for item in rules if isinstance(item, WindowRule)),
        tuple(item for item in rules if isinstance(item, StatefulRuleSpec)),
    )


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles from source every time: no ``__pycache__`` beside the rules, and no stale
    bytecode when a rule file is edited twice within the cache's one-second mtime resolution."""

    def get_code(self, fullname: str) -> types.CodeType:
        return compile(self.get_data(self.path), self.path, "exec", dont_inherit=True)


def _load_module(file: Path) -> list[Rule | WindowRule | StatefulRuleSpec]:
    digest = hashlib.blake2b(str(file.resolve()).encode(), digest_size=4).hexdigest()
    stem = re.sub(r"\W", "_", file.stem)
    module_name = f"streamproc_rules.{stem}_{digest}"
    loader = _SourceLoader(module_name, str(file))
    spec = importlib.util.spec_from_file_location(module_name, file, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        loader.exec_module(module)
    except SyntaxError as error:
        sys.modules.pop(module_name, None)
        raise RuleCompileError(
            f"Python syntax error: {error.msg}",
            file=error.filename or str(file),
            line=error.lineno,
            column=error.offset,
            hint="fix the Python syntax of the rule module",
        ) from None
    except RuleCompileError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as error:
        sys.modules.pop(module_name, None)
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(file)]
        raise RuleCompileError(
            f"importing the rule module failed: {type(error).__name__}: {error}",
            file=str(file),
            line=frames[-1].lineno if frames else None,
            hint="a rule module may only declare rules and import what they need",
        ) from error
    # By identity: a rule bound to two names counts once.
    found: dict[int, Rule | WindowRule | StatefulRuleSpec] = {}
    for value in vars(module).values():
        if isinstance(value, Rule | WindowRule | StatefulRuleSpec):
            found.setdefault(id(value), value)
    return list(found.values())


def _make(
    name: str,
    condition: Condition,
    select: Sequence[str],
    key: str | None,
    version: int,
    severity: Severity,
    sinks: Sequence[str],
    description: str,
    origin: str,
    compiled: CompiledCondition | None = None,
) -> Rule:
    """The argument order of :func:`rule`, so declarations above stay one line each. An SQL
    condition's text and fields come from what it compiled to."""
    return Rule(
        name=name,
        version=version,
        condition=condition,
        select=select,  # type: ignore[arg-type]  # Rule.__post_init__ validates and makes tuples
        sinks=sinks,  # type: ignore[arg-type]
        severity=severity,
        key=key,
        description=description,
        condition_text=None if compiled is None else compiled.text,
        origin=origin,
        condition_fields=None if compiled is None else compiled.fields,
        compiled=compiled,
    )


def _wrap_predicate(function: Callable[[Mapping[str, Any]], object]) -> Condition:
    """A Python predicate as a Condition: a KeyError means a missing field, as for SQL rules;
    every other exception propagates unchanged (the processor dead-letters the record)."""

    @functools.wraps(function)
    def condition(doc: Mapping[str, Any]) -> bool:
        try:
            return bool(function(doc))
        except KeyError as error:
            raise MissingFieldError(str(error.args[0]) if error.args else "") from error

    return condition


def _key_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError: e.g. ints beyond 64 bits
        return str(value)


def _fuse(rules: tuple[Rule, ...]) -> FusedConditions | None:
    conditions = [
        rule.compiled
        for rule in rules
        if rule.compiled is not None and rule.compiled.fn is rule.condition
    ]
    if len(rules) < 2 or len(conditions) < len(rules):
        return None  # a Python predicate among them: the rules are called one by one
    return fuse_conditions(conditions)


def _split_origin(origin: str) -> tuple[str | None, int | None]:
    file, _, line = origin.rpartition(":")
    return (file, int(line)) if file and line.isdigit() else (origin or None, None)


def _in_module(
    error: RuleCompileError, file: str, line: int, text: str, keyword: str = "condition"
) -> RuleCompileError:
    """Re-locate an SQL compile error from the SQL text (the ``keyword=`` argument of the call
    at ``line``) to the rule module's source."""
    column = None
    literal = _find_literal(file, line, text, keyword)
    if literal is not None and error.line is not None and error.column is not None:
        line, column = literal[0] + error.line - 1, error.column
        if error.line == 1:
            column += literal[1]  # the condition's first line starts inside the source line
    return RuleCompileError(
        error.message, file=file, line=line, column=column, rule=error.rule, hint=error.hint
    )


def _find_literal(file: str, call_line: int, text: str, keyword: str) -> tuple[int, int] | None:
    """(line, 0-based column) where the ``keyword=`` string of the call at ``call_line`` starts,
    if it is a single literal without escapes (so positions in it map one to one)."""
    try:
        source = Path(file).read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.lineno <= call_line <= (node.end_lineno or 0)):
            continue
        for argument in node.keywords:
            value = argument.value
            if argument.arg != keyword or not isinstance(value, ast.Constant):
                continue
            segment = ast.get_source_segment(source, value) or ""
            quote = re.match(r"[rRuU]?('''|\"\"\"|'|\")", segment)
            if quote and segment[quote.end() : len(segment) - len(quote[1])] == text:
                line_bytes = source.splitlines()[value.lineno - 1].encode()
                return value.lineno, len(line_bytes[: value.col_offset].decode()) + quote.end()
    return None
