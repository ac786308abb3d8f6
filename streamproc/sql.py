"""Compile an SQL condition (what follows WHERE) into a fast predicate over one record.

The text is parsed with sqlglot, each node is checked against an allow-list and translated into a
Python ``ast`` that is compiled once. The user's text never reaches ``eval``/``exec``: field names
only become string constants in subscripts, and every name, attribute and call in the generated
code is chosen here.

Supported: ``= <> != < <= > >=``, AND OR NOT, ``[NOT] IN (...)``, ``[NOT] BETWEEN a AND b``,
``IS [NOT] NULL|TRUE|FALSE``, ``[NOT] LIKE|ILIKE 'pattern' [ESCAPE 'c']``, ``+ - * / %``, unary
minus, parentheses, string/number/TRUE/FALSE/NULL literals, fields (``merchant.country`` reads
``record["merchant"]["country"]``, ``"odd name"`` quotes a name, names are case-sensitive) and
LOWER, UPPER, LENGTH, ABS, COALESCE. Anything else raises RuleCompileError at compile time.

Semantics (the contract; tests/unit/test_sql.py checks it against a reference evaluator):

- NULL is ``None``; logic is three-valued: a comparison with a NULL side is NULL, NOT NULL is NULL,
  FALSE AND NULL is FALSE, TRUE OR NULL is TRUE. A rule matches only when the condition is TRUE,
  so neither ``x = 1`` nor ``NOT x = 1`` matches when x is NULL.
- Values have a family: number (int, float; booleans are *not* numbers), string, boolean, or any
  other type (objects, arrays) by itself. ``=`` across families is FALSE, ``<>`` TRUE. ``< <= > >=``
  and BETWEEN order numbers, strings and booleans (FALSE < TRUE) within one family; any other pair
  is NULL, so neither ``a < b`` nor ``NOT a < b`` matches. ``x IN (a, b)`` is ``x = a OR x = b``.
- LIKE/ILIKE take strings (other values give NULL) and match the whole string: ``%`` is any run of
  characters, ``_`` one character, ESCAPE 'c' quotes the next character, all else is literal.
- ``+ - * / %`` and unary minus take numbers (anything else gives NULL); ``/`` is true division
  (7 / 2 = 3.5); a zero divisor gives NULL; ``%`` has the sign of the dividend (SQL MOD).
- LOWER, UPPER, LENGTH take strings and ABS numbers (else NULL); COALESCE returns its first
  non-NULL argument. A field used alone as a condition must be boolean; anything else is NULL.
- A missing field raises MissingFieldError(dotted path), as does a path through a non-object (the
  processor dead-letters the record), except as the direct operand of IS [NOT] NULL (then NULL).
- Evaluation is lazy: ``a AND b`` skips b when a is FALSE, ``a OR b`` skips b when a is TRUE, and
  where only TRUE matters (not under NOT, IS or a comparison) ``a AND b`` also skips b when a is
  NULL, since the rule cannot match anyway. A missing field in a skipped part is no error.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from streamproc.errors import MissingFieldError, RuleCompileError

__all__ = ["CompiledCondition", "compile_condition", "field_getter"]

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """``fn(record)`` is True iff the condition is TRUE; it raises MissingFieldError for a needed
    field the record lacks, never mutates the record and keeps no state (thread-safe).
    ``fields`` holds every dotted path referenced; ``python_source`` is the generated code."""

    text: str
    fn: Predicate
    fields: frozenset[str]
    python_source: str = ""


# -- runtime: the semantics in plain Python ----------------------------------------------------
# Generated code inlines the common fast paths and calls these for the rest (NULLs, mixed types).

_NUMBER_TYPES = frozenset({int, float})
Family = Literal["num", "str", "bool"]
_FAMILIES: dict[type, Family] = {int: "num", float: "num", str: "str", bool: "bool"}
Kind = Literal["num", "str", "bool", "null", "any"]  # what a compiled value holds (besides NULL)


def _family(value: object) -> object:
    return _FAMILIES.get(type(value), type(value))


def _eq(a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    return _family(a) == _family(b) and bool(a == b)


def _ordering(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool | None]:
    def compare(a: Any, b: Any) -> bool | None:
        family = _family(a)
        if a is None or b is None or family not in ("num", "str", "bool") or family != _family(b):
            return None
        return bool(op(a, b))

    return compare


def _arithmetic(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        return op(a, b) if type(a) in _NUMBER_TYPES and type(b) in _NUMBER_TYPES else None

    return apply


def _sql_mod(a: Any, b: Any) -> Any:
    remainder = abs(a) % abs(b)  # Python's % takes the divisor's sign, SQL's the dividend's
    return -remainder if a < 0 else remainder


def _in(value: Any, options: tuple[Any, ...]) -> bool | None:
    """TRUE on a match, else NULL if the value or an option is NULL, else FALSE."""
    unknown = value is None
    for option in options:
        result = _eq(value, option)
        if result:
            return True
        unknown = unknown or result is None
    return None if unknown else False


def _get_or_none(doc: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path``, or None if missing or unreachable (operands of IS NULL)."""
    for segment in path:
        try:
            doc = doc[segment]
        except (KeyError, TypeError):
            return None
    return doc


def _missing(doc: Any, paths: tuple[tuple[str, ...], ...], error: Exception) -> None:
    """On KeyError/TypeError in generated code: raise MissingFieldError for the field, or return
    (the caller re-raises) when every field is reachable, i.e. the error was not about a field.
    Prefers a path failing at the KeyError's key, to name the field actually looked up."""
    key = error.args[0] if isinstance(error, KeyError) and error.args else None
    first = None
    for path in paths:
        value: Any = doc
        for segment in path:
            try:
                value = value[segment]
            except (KeyError, TypeError):
                if key is None or segment == key:
                    raise MissingFieldError(".".join(path)) from None
                first = first or ".".join(path)
                break
    if first is not None:
        raise MissingFieldError(first) from None


_HELPERS: dict[str, Callable[..., Any]] = {
    "eq": _eq,
    "ne": lambda a, b: None if (equal := _eq(a, b)) is None else not equal,
    "lt": _ordering(operator.lt),
    "le": _ordering(operator.le),
    "gt": _ordering(operator.gt),
    "ge": _ordering(operator.ge),
    "add": _arithmetic(operator.add),
    "sub": _arithmetic(operator.sub),
    "mul": _arithmetic(operator.mul),
    "div": _arithmetic(lambda a, b: None if b == 0 else a / b),
    "mod": _arithmetic(lambda a, b: None if b == 0 else _sql_mod(a, b)),
    "in": _in,
}
_RUNTIME: dict[str, Any] = {
    "__builtins__": {},  # generated code uses only the names below
    **{f"_{name}": helper for name, helper in _HELPERS.items()},
    **{"_NUM": _NUMBER_TYPES, "_ORD": frozenset(_FAMILIES), "_str": str, "_bool": bool},
    **{"_len": len, "_abs": abs, "_get_or_none": _get_or_none, "_missing": _missing},
    **{"KeyError": KeyError, "TypeError": TypeError},
}


def field_getter(path: str) -> Callable[[Mapping[str, Any]], Any]:
    """``get(record)`` reads dotted ``path`` and raises MissingFieldError(path) when a segment is
    missing or the path crosses a non-object. An invalid path (empty segment, a segment starting
    with ``__``) raises RuleCompileError now."""
    segments = _split_path(path)

    def get(doc: Mapping[str, Any]) -> Any:
        value: Any = doc
        try:
            for segment in segments:
                value = value[segment]
        except (KeyError, TypeError):
            raise MissingFieldError(path) from None
        return value

    return get


def _split_path(path: str) -> tuple[str, ...]:
    segments = tuple(path.split(".")) if isinstance(path, str) else ("",)
    for segment in segments:
        if problem := _segment_problem(segment):
            raise RuleCompileError(f"invalid field path {path!r}: {problem}", hint=_PATH_HINT)
    return segments


def _segment_problem(segment: str) -> str | None:
    if not segment or segment != segment.strip():
        return f"empty field name or name with surrounding spaces: {segment!r}"
    if segment.startswith("__"):
        return f"field name {segment!r} is reserved (names starting with '__' are not allowed)"
    return None


# -- compiler: sqlglot tree -> Python ast --------------------------------------------------------
# Boolean nodes compile in one of two modes. ``truth``: the result is exactly True/False ("is it
# TRUE?"), so Python's ``and``/``or`` short-circuit work; used at the top and under AND/OR.
# Three-valued: True/False/None, needed under NOT, IS and comparisons.
#
# For the seed rule ``amount > 2000 AND state <> home_state`` the generated code is straight-line,
# one class test per comparison, no allocation (``_ne`` runs only for mixed types or NULL):
#
#     def _condition(r):
#         try:
#             return (_t0 > 2000 if (_t0 := r['amount']).__class__ in _NUM else False) and (
#                 _t1 != _t2 if (_t1 := r['state']).__class__ is (_t2 := r['home_state']).__class__
#                 else _ne(_t1, _t2) is True)
#         except (KeyError, TypeError) as _e:
#             _missing(r, _FIELDS, _e)
#             raise

_TEMPLATE = """
def _condition(r):
    try:
        return None
    except (KeyError, TypeError) as _e:
        _missing(r, _FIELDS, _e)
        raise
"""
_COMPARISONS: dict[type[exp.Expr], tuple[str, type[ast.cmpop]]] = {
    exp.EQ: ("eq", ast.Eq),
    exp.NEQ: ("ne", ast.NotEq),
    exp.LT: ("lt", ast.Lt),
    exp.LTE: ("le", ast.LtE),
    exp.GT: ("gt", ast.Gt),
    exp.GTE: ("ge", ast.GtE),
}
_PY_COMPARE = {name: op for name, op in _COMPARISONS.values()}
_ARITHMETIC: dict[type[exp.Expr], tuple[str, type[ast.operator] | None]] = {
    exp.Add: ("add", ast.Add),
    exp.Sub: ("sub", ast.Sub),
    exp.Mul: ("mul", ast.Mult),
    exp.Div: ("div", None),  # zero divisors: always through the helper
    exp.Mod: ("mod", None),
}
_BOOLEAN_NODES: tuple[type[exp.Expr], ...] = (
    *(exp.And, exp.Or, exp.Not, exp.In, exp.Between, exp.Is, exp.Like, exp.ILike, exp.Escape),
    *_COMPARISONS,
)
_FUNCTIONS = "ABS, COALESCE, LENGTH, LOWER, UPPER"
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HINT = "write a WHERE-clause condition, e.g. amount > 2000 AND state <> home_state"
_PATH_HINT = "write fields as name or parent.child"


@dataclass(frozen=True, slots=True)
class _Val:
    expr: ast.expr
    kind: Kind
    const: bool = False  # expr is an ast.Constant holding the final value

    @property
    def value(self) -> Any:
        return self.expr.value if isinstance(self.expr, ast.Constant) else None


def _load(name: str) -> ast.Name:
    return ast.Name(id=name, ctx=ast.Load())


def _const(value: Any) -> ast.Constant:
    return ast.Constant(value=value)


def _cmp(left: ast.expr, op: ast.cmpop, right: ast.expr) -> ast.Compare:
    return ast.Compare(left=left, ops=[op], comparators=[right])


def _is(left: ast.expr, value: bool | None, negate: bool = False) -> ast.expr:
    if isinstance(left, ast.Constant):  # fold: "'a' is None" is a SyntaxWarning
        return _const((left.value is value) != negate)
    return _cmp(left, ast.IsNot() if negate else ast.Is(), _const(value))


def _if(test: ast.expr, body: ast.expr | bool | None, orelse: ast.expr | bool | None) -> ast.IfExp:
    body, orelse = (x if isinstance(x, ast.expr) else _const(x) for x in (body, orelse))
    return ast.IfExp(test=test, body=body, orelse=orelse)


def _call(function: str | ast.expr, *args: ast.expr) -> ast.Call:
    func = _load(function) if isinstance(function, str) else function
    return ast.Call(func=func, args=list(args), keywords=[])


def _attr(subject: ast.expr, name: str) -> ast.Attribute:
    return ast.Attribute(value=subject, attr=name, ctx=ast.Load())


def _const_family(value: Any) -> Family | None:
    return _FAMILIES.get(type(value))


class _Compiler:
    """One compilation: walks the sqlglot tree, collects fields and constants, builds the ast."""

    def __init__(self, text: str, origin: str | None, rule: str | None) -> None:
        self.text, self.origin, self.rule = text, origin, rule
        self.namespace: dict[str, Any] = dict(_RUNTIME)
        self.fields: dict[str, None] = {}  # ordered sets
        self.required: dict[tuple[str, ...], None] = {}
        self.counter = 0

    def fail(
        self,
        message: str,
        hint: str | None,
        offset: int | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> NoReturn:
        """Raise a RuleCompileError positioned in the condition (by offset or line/column)."""
        if offset is not None:
            line = self.text.count("\n", 0, offset) + 1
            column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        if line is not None:
            message = f"{message} (condition line {line}, column {column})"
        raise RuleCompileError(
            message, file=self.origin, line=line, column=column, rule=self.rule, hint=hint
        )

    def error(self, node: exp.Expr, message: str, hint: str | None = None) -> NoReturn:
        starts = [n.meta["start"] for n in node.walk() if "start" in n.meta]
        offset = min(starts) if starts else None
        if "start" not in node.meta and (head := re.match(r"\w+|\S", node.sql())):
            # Nodes like CAST(...) or (SELECT ...) carry no position, only their children do:
            # look for the node's first token before the first child, or anywhere.
            end = len(self.text) if offset is None else offset + 1
            found = self.text.upper().rfind(head[0].upper(), 0, end)
            offset = found if found >= 0 else offset
        self.fail(message, hint, offset)

    def parse(self) -> exp.Expr:
        text = self.text
        try:
            tree: exp.Expr | None = sqlglot.parse_one(text, into=exp.Condition)
        except ParseError as parse_error:
            details = parse_error.errors[0] if parse_error.errors else {}
            line, column = details.get("line"), details.get("col")
            highlight = str(details.get("highlight") or "")
            if column and highlight and "\n" not in highlight and column >= len(highlight):
                column = column - len(highlight) + 1  # sqlglot points at the end of the token
            description = str(details.get("description") or parse_error)
            description = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", description)
            hint = _HINT
            if text.lstrip().upper().startswith("SELECT"):
                hint = "write only the condition that would follow WHERE, not a SELECT statement"
            near = f" near {highlight!r}" if highlight else ""
            self.fail(f"syntax error{near}: {description}", hint, None, line, column)
        except TokenError:
            match = _QUOTED.match(text)
            offset = match.end() if match and match.end() < len(text) else None
            hint = "quote strings as 'text' (write '' for a quote) and names as \"name\""
            self.fail("unterminated quoted string" if offset else "cannot tokenize", hint, offset)
        except RecursionError:
            self.fail("condition is nested too deeply", None)
        except Exception as other:  # load time only: any other parser failure is a compile error
            self.fail(f"cannot parse: {other}", _HINT)
        if tree is None:
            self.fail("condition is empty", _HINT)
        return tree

    def unsupported(self, node: exp.Expr) -> NoReturn:
        if isinstance(node, exp.Subquery | exp.Query | exp.Exists):
            self.error(node, "subqueries are not supported", "a rule sees one record at a time")
        if isinstance(node, exp.Cast):
            self.error(node, "CAST is not supported", "fields keep their JSON types")
        if isinstance(node, exp.Func):
            name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            self.error(node, f"function {name}() is not allowed", f"use {_FUNCTIONS}")
        sql = node.sql()
        sql = sql if len(sql) <= 40 else sql[:37] + "..."
        self.error(
            node,
            f"{sql!r} ({type(node).__name__}) is not supported in a rule condition",
            f"use fields, literals, comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS NULL, "
            f"+ - * / % and {_FUNCTIONS}",
        )

    def expect(self, node: exp.Expr, allowed: set[str]) -> None:
        """Reject options of an allowed node that are not implemented (e.g. BETWEEN SYMMETRIC)."""
        for key, value in node.args.items():
            empty = value is None or value is False or (isinstance(value, list | str) and not value)
            if key not in allowed and not empty:
                self.error(node, f"{node.sql()!r}: option {key!r} is not supported")

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter - 1}"

    def constant(self, value: Any) -> ast.Name:
        name = self.name("_k")
        self.namespace[name] = value
        return _load(name)

    def bind(self, val: _Val) -> tuple[ast.expr, ast.expr]:
        """(first use, later uses) of a value: a walrus, so each operand is evaluated once."""
        if val.const or isinstance(val.expr, ast.Name):
            return val.expr, val.expr
        name = self.name("_t")
        return ast.NamedExpr(target=ast.Name(id=name, ctx=ast.Store()), value=val.expr), _load(name)

    def is_family(self, first: ast.expr, kind: Kind, family: Family) -> ast.expr:
        if kind == family:  # statically of that family or NULL
            return _is(first, None, negate=True)
        if family == "num":
            return _cmp(_attr(first, "__class__"), ast.In(), _load("_NUM"))
        return _cmp(_attr(first, "__class__"), ast.Is(), _load(f"_{family}"))

    def and_or(self, left: ast.expr, right: ast.expr, is_or: bool, truth: bool) -> ast.expr:
        if truth:
            op: ast.boolop = ast.Or() if is_or else ast.And()
            parts = [
                p.values if isinstance(p, ast.BoolOp) and type(p.op) is type(op) else [p]
                for p in (left, right)
            ]
            return ast.BoolOp(op=op, values=parts[0] + parts[1])  # flat: a AND b AND c
        p, q = self.bind(_Val(left, "bool")), self.bind(_Val(right, "bool"))
        either_null = ast.BoolOp(op=ast.Or(), values=[_is(p[1], None), _is(q[1], None)])
        undecided = _if(either_null, None, not is_or)
        decided = _if(_is(q[0], is_or), _const(is_or), undecided)  # is_or: TRUE decides an OR
        return _if(_is(p[0], is_or), _const(is_or), decided)

    # -- boolean context ---------------------------------------------------------------------

    def cond(self, node: exp.Expr, truth: bool) -> ast.expr:
        """A boolean node: exactly True/False if ``truth``, else True/False/None."""
        if isinstance(node, exp.Paren):
            return self.cond(node.this, truth)
        if isinstance(node, exp.And | exp.Or):
            self.expect(node, {"this", "expression"})
            left, right = self.cond(node.this, truth), self.cond(node.expression, truth)
            return self.and_or(left, right, isinstance(node, exp.Or), truth)
        if isinstance(node, exp.Not):
            inner = node.this
            while isinstance(inner, exp.Paren):
                inner = inner.this
            if isinstance(inner, exp.Is):  # IS is never NULL, so NOT is plain negation
                return self.is_test(inner, negate=True)
            value = self.cond(inner, truth=False)
            if truth:
                return _is(value, False)
            first, again = self.bind(_Val(value, "bool"))
            return _if(_is(first, None), _const(None), ast.UnaryOp(op=ast.Not(), operand=again))
        if type(node) in _COMPARISONS:
            self.expect(node, {"this", "expression"})
            op = _COMPARISONS[type(node)][0]
            return self.compare(op, self.value(node.this), self.value(node.expression), truth)
        if isinstance(node, exp.In):
            return self.in_list(node, truth)
        if isinstance(node, exp.Between):
            return self.between(node, truth)
        if isinstance(node, exp.Is):
            return self.is_test(node, negate=False)
        if isinstance(node, exp.Like | exp.ILike):
            return self.like(node, None, truth)
        if isinstance(node, exp.Escape):
            self.expect(node, {"this", "expression"})
            if not isinstance(node.this, exp.Like | exp.ILike):
                self.unsupported(node)
            return self.like(node.this, node.expression, truth)
        val = self.value(node)
        if val.kind in ("num", "str"):
            self.error(node, f"{node.sql()!r} is not a condition (not TRUE or FALSE)", _HINT)
        if val.const:
            return _const(val.value is True if truth else val.value)
        if truth:
            return _is(val.expr, True)
        if val.kind == "bool":
            return val.expr
        first, again = self.bind(val)  # a bare field: only a boolean counts, else NULL
        return _if(_cmp(_attr(first, "__class__"), ast.Is(), _load("_bool")), again, None)

    def compare(self, op: str, left: _Val, right: _Val, truth: bool) -> ast.expr:
        if left.const and right.const:
            result = _HELPERS[op](left.value, right.value)
            return _const(result is True if truth else result)
        pyop, ordering = _PY_COMPARE[op](), op not in ("eq", "ne")
        literal = right if right.const else left if left.const else None
        family = _const_family(literal.value) if literal else None
        if literal and family:  # field OP literal: one class test, then Python's operator
            other = left if literal is right else right
            first, again = self.bind(other)
            operands = (again, literal.expr) if literal is right else (literal.expr, again)
            slow: ast.expr | bool | None  # the other side is NULL or of another family
            if op == "ne":  # across families <> is TRUE
                slow = _is(again, None, negate=True) if truth else _if(_is(again, None), None, True)
            else:
                slow = False if truth else None if ordering else _if(_is(again, None), None, False)
            fast = _cmp(operands[0], pyop, operands[1])
            return _if(self.is_family(first, other.kind, family), fast, slow)
        if left.const or right.const:  # a NULL literal: rare, use the helper
            helper = _call(f"_{op}", left.expr, right.expr)
            return _is(helper, True) if truth else helper
        (lf, la), (rf, ra) = self.bind(left), self.bind(right)
        guard: ast.expr = _cmp(_attr(lf, "__class__"), ast.Is(), _attr(rf, "__class__"))
        if ordering:
            extra: ast.expr | None = _cmp(_attr(la, "__class__"), ast.In(), _load("_ORD"))
        else:  # NULL = NULL is not TRUE; in truth mode NULL <> NULL is False already
            extra = _is(la, None, negate=True) if op == "eq" or not truth else None
        guard = ast.BoolOp(op=ast.And(), values=[guard, extra]) if extra else guard
        slow_call = _call(f"_{op}", la, ra)
        return _if(guard, _cmp(la, pyop, ra), _is(slow_call, True) if truth else slow_call)

    def in_list(self, node: exp.In, truth: bool) -> ast.expr:
        self.expect(node, {"this", "expressions"})
        if not node.expressions:
            self.error(node, "IN needs at least one value", "write e.g. state IN ('CA', 'NY')")
        subject = self.value(node.this)
        options = [self.value(option) for option in node.expressions]
        values = tuple(option.value for option in options)
        families = {_const_family(v) for v in values if v is not None}
        family = families.pop() if len(families) == 1 else None
        result: ast.expr
        if not all(option.const for option in options):
            elements = ast.Tuple(elts=[option.expr for option in options], ctx=ast.Load())
            result = _call("_in", subject.expr, elements)
        elif subject.const:
            result = _const(_in(subject.value, values))
        elif family is None:
            result = _call("_in", subject.expr, self.constant(values))
        else:  # e.g. state IN ('CA', 'NY'): one class test and a set lookup
            first, again = self.bind(subject)
            test = self.is_family(first, subject.kind, family)
            fast: ast.expr = _cmp(again, ast.In(), self.constant(frozenset(values) - {None}))
            if truth:
                return _if(test, fast, False)
            if None in values:
                return _if(test, ast.BoolOp(op=ast.Or(), values=[fast, _const(None)]), None)
            return _if(test, fast, _if(_is(again, None), None, False))
        return _is(result, True) if truth else result

    def between(self, node: exp.Between, truth: bool) -> ast.expr:
        self.expect(node, {"this", "low", "high"})
        subject = self.value(node.this)
        low, high = self.value(node.args["low"]), self.value(node.args["high"])
        family = _const_family(low.value) if low.const else None
        first, again = self.bind(subject)
        if family and high.const and _const_family(high.value) == family and not subject.const:
            chain = ast.Compare(
                left=low.expr, ops=[ast.LtE(), ast.LtE()], comparators=[again, high.expr]
            )
            return _if(self.is_family(first, subject.kind, family), chain, False if truth else None)
        ge = self.compare("ge", _Val(first, subject.kind, subject.const), low, truth)
        le = self.compare("le", _Val(again, subject.kind, subject.const), high, truth)
        return self.and_or(ge, le, is_or=False, truth=truth)  # x >= low AND x <= high

    def is_test(self, node: exp.Is, negate: bool) -> ast.expr:
        """``x IS [NOT] NULL|TRUE|FALSE``: always exactly True or False."""
        self.expect(node, {"this", "expression"})
        target, operand = node.expression, node.this
        while isinstance(operand, exp.Paren):
            operand = operand.this
        if isinstance(target, exp.Boolean):
            return _is(self.cond(operand, truth=False), bool(target.this), negate)
        if not isinstance(target, exp.Null):
            self.error(target, "IS must be followed by NULL, TRUE or FALSE")
        if isinstance(operand, exp.Column | exp.Dot):  # missing counts as NULL here
            path = self.field_path(operand, required=False)
            if len(path) == 1:
                return _is(_call(_attr(_load("r"), "get"), _const(path[0])), None, negate)
            return _is(_call("_get_or_none", _load("r"), _const(path)), None, negate)
        if isinstance(operand, _BOOLEAN_NODES):
            return _is(self.cond(operand, truth=False), None, negate)
        return _is(self.value(operand).expr, None, negate)

    def like(self, node: exp.Like | exp.ILike, escape: exp.Expr | None, truth: bool) -> ast.expr:
        self.expect(node, {"this", "expression", "negate"})
        pattern = node.expression
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            self.error(pattern, "the LIKE pattern must be a string literal", "e.g. name LIKE 'ab%'")
        if escape is not None and not (
            isinstance(escape, exp.Literal) and escape.is_string and len(escape.this) == 1
        ):
            self.error(escape, "ESCAPE takes a string of exactly one character")
        tokens: list[tuple[str, str]] = []  # ("text", run) | ("%", "") | ("_", "")
        chars = iter(str(pattern.this))
        for char in chars:
            wildcard = char in "%_"
            if escape is not None and char == escape.this:
                char, wildcard = next(chars, ""), False
                if not char:
                    self.error(pattern, "the LIKE pattern ends with its ESCAPE character")
            if not wildcard and tokens and tokens[-1][0] == "text":
                tokens[-1] = ("text", tokens[-1][1] + char)
            elif not (char == "%" and wildcard and tokens and tokens[-1][0] == "%"):
                tokens.append((char, "") if wildcard else ("text", char))
        subject = self.value(node.this)
        first, again = self.bind(subject)
        fast = self.like_match(again, tokens, isinstance(node, exp.ILike))
        if node.args.get("negate"):
            fast = ast.UnaryOp(op=ast.Not(), operand=fast)
        return _if(self.is_family(first, subject.kind, "str"), fast, False if truth else None)

    def like_match(self, subject: ast.expr, tokens: list[tuple[str, str]], icase: bool) -> ast.expr:
        shape = tuple(kind for kind, _ in tokens)
        text = _const(next((t for kind, t in tokens if kind == "text"), ""))
        if not icase:  # the common shapes need no regex
            if shape in ((), ("text",)):
                return _cmp(subject, ast.Eq(), text)
            if shape == ("%",):
                return _const(True)
            if shape in (("text", "%"), ("%", "text")):
                return _call(
                    _attr(subject, "startswith" if shape[0] == "text" else "endswith"), text
                )
            if shape == ("%", "text", "%"):
                return _cmp(text, ast.In(), subject)
        regex = "".join({"%": ".*", "_": "."}.get(kind) or re.escape(t) for kind, t in tokens)
        flags = re.DOTALL | (re.IGNORECASE if icase else 0)
        fullmatch = self.constant(re.compile(regex, flags).fullmatch)
        return _is(_call(fullmatch, subject), None, negate=True)

    # -- value context -------------------------------------------------------------------------

    def value(self, node: exp.Expr) -> _Val:
        if isinstance(node, exp.Paren):
            return self.value(node.this)
        if isinstance(node, _BOOLEAN_NODES):
            return _Val(self.cond(node, truth=False), "bool")
        if isinstance(node, exp.Literal) and node.is_string:
            return _Val(_const(str(node.this)), "str", const=True)
        if isinstance(node, exp.Literal):
            if not _NUMBER.fullmatch(text := str(node.this)):
                self.error(node, f"unsupported number literal {text!r}")
            return _Val(_const(int(text) if text.isdigit() else float(text)), "num", const=True)
        if isinstance(node, exp.Boolean):
            return _Val(_const(bool(node.this)), "bool", const=True)
        if isinstance(node, exp.Null):
            return _Val(_const(None), "null", const=True)
        if isinstance(node, exp.Column | exp.Dot):
            expr: ast.expr = _load("r")
            for segment in self.field_path(node, required=True):
                expr = ast.Subscript(value=expr, slice=_const(segment), ctx=ast.Load())
            return _Val(expr, "any")
        if type(node) in _ARITHMETIC:
            return self.arithmetic(node)
        if isinstance(node, exp.Neg | exp.Lower | exp.Upper | exp.Length | exp.Abs):
            self.expect(node, {"this"})
            operand = self.value(node.this)
            if isinstance(node, exp.Neg) and operand.const:
                folded = -operand.value if _const_family(operand.value) == "num" else None
                return _Val(_const(folded), "num", const=True)
            first, again = self.bind(operand)
            text_function = isinstance(node, exp.Lower | exp.Upper | exp.Length)
            test = self.is_family(first, operand.kind, "str" if text_function else "num")
            result: ast.expr
            if isinstance(node, exp.Neg):
                result = ast.UnaryOp(op=ast.USub(), operand=again)
            elif isinstance(node, exp.Lower | exp.Upper):
                result = _call(_attr(again, "lower" if isinstance(node, exp.Lower) else "upper"))
            else:
                result = _call("_len" if isinstance(node, exp.Length) else "_abs", again)
            kind: Kind = "str" if isinstance(node, exp.Lower | exp.Upper) else "num"
            return _Val(_if(test, result, None), kind)
        if isinstance(node, exp.Coalesce):
            self.expect(node, {"this", "expressions", "is_nvl", "is_null"})
            values = [self.value(arg) for arg in [node.this, *node.expressions]]
            kinds = {v.kind for v in values if v.kind != "null"}
            expr = values[-1].expr
            for val in reversed(values[:-1]):  # lazily: later arguments only when needed
                first, again = self.bind(val)
                expr = _if(_is(first, None, negate=True), again, expr)
            return _Val(expr, kinds.pop() if len(kinds) == 1 else "any")
        self.unsupported(node)

    def arithmetic(self, node: exp.Expr) -> _Val:
        self.expect(node, {"this", "expression", "typed", "safe"})
        name, pyop = _ARITHMETIC[type(node)]
        left, right = self.value(node.this), self.value(node.expression)
        if left.const and right.const:
            return _Val(_const(_HELPERS[name](left.value, right.value)), "num", const=True)
        if pyop is None or any(v.const and _const_family(v.value) != "num" for v in (left, right)):
            return _Val(_call(f"_{name}", left.expr, right.expr), "num")
        (lf, la), (rf, ra) = self.bind(left), self.bind(right)
        tests = [
            self.is_family(f, v.kind, "num") for f, v in ((lf, left), (rf, right)) if not v.const
        ]
        # "&", not "and": both operands are always evaluated, so a missing field always raises.
        test = tests[0] if len(tests) == 1 else ast.BinOp(tests[0], ast.BitAnd(), tests[1])
        return _Val(_if(test, ast.BinOp(left=la, op=pyop(), right=ra), None), "num")

    def field_path(self, node: exp.Expr, *, required: bool) -> tuple[str, ...]:
        """Segments of a field reference: a.b.c.d parses as a Column, deeper paths add Dots."""
        parts: list[exp.Expr] = []
        while isinstance(node, exp.Dot):
            if not isinstance(node.expression, exp.Identifier):
                self.unsupported(node.expression)  # e.g. os.system('x'): a function call
            parts.insert(0, node.expression)
            node = node.this
        if not isinstance(node, exp.Column):
            self.unsupported(node)
        self.expect(node, {"this", "table", "db", "catalog"})
        names = [node.args.get(key) for key in ("catalog", "db", "table", "this")]
        parts[:0] = [part for part in names if part is not None]
        for part in parts:
            if not isinstance(part, exp.Identifier):
                self.unsupported(part)
            name = str(part.this)
            problem = _segment_problem(name)
            if problem is None and "." in name:  # it would be ambiguous in dotted field paths
                problem = f"field name {name!r} contains '.'"
            if problem:
                self.error(part, problem, _PATH_HINT)
        path = tuple(str(part.this) for part in parts)
        self.fields[".".join(path)] = None
        if required:
            self.required[path] = None
        return path


# Complete quoted strings/names or any other character: where this stops, a quote is unterminated.
_QUOTED = re.compile(r"""(?:[^'"]|'(?:[^'\\]|\\.|'')*+'|"(?:[^"]|"")*+")*+""", re.DOTALL)


def compile_condition(
    text: str, *, origin: str | None = None, rule: str | None = None
) -> CompiledCondition:
    """Compile an SQL condition into a predicate; the module docstring states the semantics.

    ``origin`` (e.g. a file name) and ``rule`` only label errors: a RuleCompileError carries
    ``file=origin`` and a 1-based ``line``/``column`` inside ``text``. The text is never
    evaluated; the predicate is code generated from the allow-listed parse tree.
    """
    compiler = _Compiler(str(text), origin, rule)
    if not isinstance(text, str) or not text.strip():
        compiler.fail("condition is empty", _HINT)
    module = ast.parse(_TEMPLATE)  # our constant template, never user text
    function = module.body[0]
    assert isinstance(function, ast.FunctionDef) and isinstance(function.body[0], ast.Try)
    returned = function.body[0].body[0]
    assert isinstance(returned, ast.Return)
    try:
        returned.value = compiler.cond(compiler.parse(), truth=True)
        ast.fix_missing_locations(module)
        code = compile(module, f"<condition {text[:60]!r}>", "exec", dont_inherit=True)
        python_source = ast.unparse(module)
    except RecursionError:
        compiler.fail("condition is nested too deeply", None)
    namespace = compiler.namespace
    namespace["_FIELDS"] = tuple(compiler.required)
    # Safe: ``code`` comes from the ast built above out of allow-listed sqlglot nodes. User text is
    # only in constants (field names, literals), the namespace holds only our helpers, builtins
    # are empty, and running the module only defines ``_condition``.
    exec(code, namespace)  # noqa: S102
    return CompiledCondition(
        text, namespace["_condition"], frozenset(compiler.fields), python_source
    )
