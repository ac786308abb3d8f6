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
import copy
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from streamproc import sql_pyast as A
from streamproc.errors import RuleCompileError
from streamproc.sql_runtime import (
    HELPERS,
    PATH_HINT,
    RUNTIME,
    Family,
    Kind,
    field_getter,
    segment_problem,
    sql_in,
)

__all__ = [
    "CompiledCondition",
    "FusedConditions",
    "compile_condition",
    "field_getter",
    "fuse_conditions",
]

Predicate = Callable[[Mapping[str, Any]], bool]
# The indices of the conditions that are TRUE for a record (see fuse_conditions).
FusedConditions = Callable[[Mapping[str, Any]], tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """``fn(record)`` is True iff the condition is TRUE; it raises MissingFieldError for a needed
    field the record lacks, never mutates the record and keeps no state (thread-safe).
    ``fields`` holds every dotted path referenced; ``python_source`` is the generated code."""

    text: str
    fn: Predicate
    fields: frozenset[str]
    python_source: str = ""
    # The condition as a Python expression over ``r`` (what ``fn`` returns): for fuse_conditions.
    tree: ast.expr | None = field(default=None, compare=False, repr=False)


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


class _Compiler:
    """One compilation: walks the sqlglot tree, collects fields and constants, builds the ast."""

    def __init__(self, text: str, origin: str | None, rule: str | None) -> None:
        self.text, self.origin, self.rule = text, origin, rule
        self.namespace: dict[str, Any] = dict(RUNTIME)
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
        return A.load(name)

    def bind(self, val: A.Val) -> tuple[ast.expr, ast.expr]:
        """(first use, later uses) of a value: a walrus, so each operand is evaluated once."""
        if val.const or isinstance(val.expr, ast.Name):
            return val.expr, val.expr
        name = self.name("_t")
        return ast.NamedExpr(target=ast.Name(id=name, ctx=ast.Store()), value=val.expr), A.load(
            name
        )

    def is_family(self, first: ast.expr, kind: Kind, family: Family) -> ast.expr:
        if kind == family:  # statically of that family or NULL
            return A.is_(first, None, negate=True)
        if family == "num":
            return A.cmp(A.attr(first, "__class__"), ast.In(), A.load("_NUM"))
        return A.cmp(A.attr(first, "__class__"), ast.Is(), A.load(f"_{family}"))

    def and_or(self, left: ast.expr, right: ast.expr, is_or: bool, truth: bool) -> ast.expr:
        if truth:
            op: ast.boolop = ast.Or() if is_or else ast.And()
            parts = [
                p.values if isinstance(p, ast.BoolOp) and type(p.op) is type(op) else [p]
                for p in (left, right)
            ]
            return ast.BoolOp(op=op, values=parts[0] + parts[1])  # flat: a AND b AND c
        p, q = self.bind(A.Val(left, "bool")), self.bind(A.Val(right, "bool"))
        either_null = ast.BoolOp(op=ast.Or(), values=[A.is_(p[1], None), A.is_(q[1], None)])
        undecided = A.if_(either_null, None, not is_or)
        decided = A.if_(A.is_(q[0], is_or), A.const(is_or), undecided)  # is_or: TRUE decides an OR
        return A.if_(A.is_(p[0], is_or), A.const(is_or), decided)

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
                return A.is_(value, False)
            first, again = self.bind(A.Val(value, "bool"))
            return A.if_(
                A.is_(first, None), A.const(None), ast.UnaryOp(op=ast.Not(), operand=again)
            )
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
            return A.const(val.value is True if truth else val.value)
        if truth:
            return A.is_(val.expr, True)
        if val.kind == "bool":
            return val.expr
        first, again = self.bind(val)  # a bare field: only a boolean counts, else NULL
        return A.if_(A.cmp(A.attr(first, "__class__"), ast.Is(), A.load("_bool")), again, None)

    def compare(self, op: str, left: A.Val, right: A.Val, truth: bool) -> ast.expr:
        if left.const and right.const:
            result = HELPERS[op](left.value, right.value)
            return A.const(result is True if truth else result)
        pyop, ordering = _PY_COMPARE[op](), op not in ("eq", "ne")
        literal = right if right.const else left if left.const else None
        family = A.const_family(literal.value) if literal else None
        if literal and family:  # field OP literal: one class test, then Python's operator
            other = left if literal is right else right
            first, again = self.bind(other)
            operands = (again, literal.expr) if literal is right else (literal.expr, again)
            slow: ast.expr | bool | None  # the other side is NULL or of another family
            if op == "ne":  # across families <> is TRUE
                slow = (
                    A.is_(again, None, negate=True)
                    if truth
                    else A.if_(A.is_(again, None), None, True)
                )
            else:
                slow = (
                    False if truth else None if ordering else A.if_(A.is_(again, None), None, False)
                )
            fast = A.cmp(operands[0], pyop, operands[1])
            return A.if_(self.is_family(first, other.kind, family), fast, slow)
        if left.const or right.const:  # a NULL literal: rare, use the helper
            helper = A.call(f"_{op}", left.expr, right.expr)
            return A.is_(helper, True) if truth else helper
        (lf, la), (rf, ra) = self.bind(left), self.bind(right)
        guard: ast.expr = A.cmp(A.attr(lf, "__class__"), ast.Is(), A.attr(rf, "__class__"))
        if ordering:
            extra: ast.expr | None = A.cmp(A.attr(la, "__class__"), ast.In(), A.load("_ORD"))
        else:  # NULL = NULL is not TRUE; in truth mode NULL <> NULL is False already
            extra = A.is_(la, None, negate=True) if op == "eq" or not truth else None
        guard = ast.BoolOp(op=ast.And(), values=[guard, extra]) if extra else guard
        slow_call = A.call(f"_{op}", la, ra)
        return A.if_(guard, A.cmp(la, pyop, ra), A.is_(slow_call, True) if truth else slow_call)

    def in_list(self, node: exp.In, truth: bool) -> ast.expr:
        self.expect(node, {"this", "expressions"})
        if not node.expressions:
            self.error(node, "IN needs at least one value", "write e.g. state IN ('CA', 'NY')")
        subject = self.value(node.this)
        options = [self.value(option) for option in node.expressions]
        values = tuple(option.value for option in options)
        families = {A.const_family(v) for v in values if v is not None}
        family = families.pop() if len(families) == 1 else None
        result: ast.expr
        if not all(option.const for option in options):
            elements = ast.Tuple(elts=[option.expr for option in options], ctx=ast.Load())
            result = A.call("_in", subject.expr, elements)
        elif subject.const:
            result = A.const(sql_in(subject.value, values))
        elif family is None:
            result = A.call("_in", subject.expr, self.constant(values))
        else:  # e.g. state IN ('CA', 'NY'): one class test and a set lookup
            first, again = self.bind(subject)
            test = self.is_family(first, subject.kind, family)
            fast: ast.expr = A.cmp(again, ast.In(), self.constant(frozenset(values) - {None}))
            if truth:
                return A.if_(test, fast, False)
            if None in values:
                return A.if_(test, ast.BoolOp(op=ast.Or(), values=[fast, A.const(None)]), None)
            return A.if_(test, fast, A.if_(A.is_(again, None), None, False))
        return A.is_(result, True) if truth else result

    def between(self, node: exp.Between, truth: bool) -> ast.expr:
        self.expect(node, {"this", "low", "high"})
        subject = self.value(node.this)
        low, high = self.value(node.args["low"]), self.value(node.args["high"])
        family = A.const_family(low.value) if low.const else None
        first, again = self.bind(subject)
        if family and high.const and A.const_family(high.value) == family and not subject.const:
            chain = ast.Compare(
                left=low.expr, ops=[ast.LtE(), ast.LtE()], comparators=[again, high.expr]
            )
            return A.if_(
                self.is_family(first, subject.kind, family), chain, False if truth else None
            )
        ge = self.compare("ge", A.Val(first, subject.kind, subject.const), low, truth)
        le = self.compare("le", A.Val(again, subject.kind, subject.const), high, truth)
        return self.and_or(ge, le, is_or=False, truth=truth)  # x >= low AND x <= high

    def is_test(self, node: exp.Is, negate: bool) -> ast.expr:
        """``x IS [NOT] NULL|TRUE|FALSE``: always exactly True or False."""
        self.expect(node, {"this", "expression"})
        target, operand = node.expression, node.this
        while isinstance(operand, exp.Paren):
            operand = operand.this
        if isinstance(target, exp.Boolean):
            return A.is_(self.cond(operand, truth=False), bool(target.this), negate)
        if not isinstance(target, exp.Null):
            self.error(target, "IS must be followed by NULL, TRUE or FALSE")
        if isinstance(operand, exp.Column | exp.Dot):  # missing counts as NULL here
            path = self.field_path(operand, required=False)
            if len(path) == 1:
                return A.is_(A.call(A.attr(A.load("r"), "get"), A.const(path[0])), None, negate)
            return A.is_(A.call("_get_or_none", A.load("r"), A.const(path)), None, negate)
        if isinstance(operand, _BOOLEAN_NODES):
            return A.is_(self.cond(operand, truth=False), None, negate)
        return A.is_(self.value(operand).expr, None, negate)

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
        return A.if_(self.is_family(first, subject.kind, "str"), fast, False if truth else None)

    def like_match(self, subject: ast.expr, tokens: list[tuple[str, str]], icase: bool) -> ast.expr:
        shape = tuple(kind for kind, _ in tokens)
        text = A.const(next((t for kind, t in tokens if kind == "text"), ""))
        if not icase:  # the common shapes need no regex
            if shape in ((), ("text",)):
                return A.cmp(subject, ast.Eq(), text)
            if shape == ("%",):
                return A.const(True)
            if shape in (("text", "%"), ("%", "text")):
                return A.call(
                    A.attr(subject, "startswith" if shape[0] == "text" else "endswith"), text
                )
            if shape == ("%", "text", "%"):
                return A.cmp(text, ast.In(), subject)
        regex = "".join({"%": ".*", "_": "."}.get(kind) or re.escape(t) for kind, t in tokens)
        flags = re.DOTALL | (re.IGNORECASE if icase else 0)
        fullmatch = self.constant(re.compile(regex, flags).fullmatch)
        return A.is_(A.call(fullmatch, subject), None, negate=True)

    # -- value context -------------------------------------------------------------------------

    def value(self, node: exp.Expr) -> A.Val:
        if isinstance(node, exp.Paren):
            return self.value(node.this)
        if isinstance(node, _BOOLEAN_NODES):
            return A.Val(self.cond(node, truth=False), "bool")
        if isinstance(node, exp.Literal) and node.is_string:
            return A.Val(A.const(str(node.this)), "str", const=True)
        if isinstance(node, exp.Literal):
            if not _NUMBER.fullmatch(text := str(node.this)):
                self.error(node, f"unsupported number literal {text!r}")
            return A.Val(A.const(int(text) if text.isdigit() else float(text)), "num", const=True)
        if isinstance(node, exp.Boolean):
            return A.Val(A.const(bool(node.this)), "bool", const=True)
        if isinstance(node, exp.Null):
            return A.Val(A.const(None), "null", const=True)
        if isinstance(node, exp.Column | exp.Dot):
            expr: ast.expr = A.load("r")
            for segment in self.field_path(node, required=True):
                expr = ast.Subscript(value=expr, slice=A.const(segment), ctx=ast.Load())
            return A.Val(expr, "any")
        if type(node) in _ARITHMETIC:
            return self.arithmetic(node)
        if isinstance(node, exp.Neg | exp.Lower | exp.Upper | exp.Length | exp.Abs):
            self.expect(node, {"this"})
            operand = self.value(node.this)
            if isinstance(node, exp.Neg) and operand.const:
                folded = -operand.value if A.const_family(operand.value) == "num" else None
                return A.Val(A.const(folded), "num", const=True)
            first, again = self.bind(operand)
            text_function = isinstance(node, exp.Lower | exp.Upper | exp.Length)
            test = self.is_family(first, operand.kind, "str" if text_function else "num")
            result: ast.expr
            if isinstance(node, exp.Neg):
                result = ast.UnaryOp(op=ast.USub(), operand=again)
            elif isinstance(node, exp.Lower | exp.Upper):
                result = A.call(A.attr(again, "lower" if isinstance(node, exp.Lower) else "upper"))
            else:
                result = A.call("_len" if isinstance(node, exp.Length) else "_abs", again)
            kind: Kind = "str" if isinstance(node, exp.Lower | exp.Upper) else "num"
            return A.Val(A.if_(test, result, None), kind)
        if isinstance(node, exp.Coalesce):
            self.expect(node, {"this", "expressions", "is_nvl", "is_null"})
            values = [self.value(arg) for arg in [node.this, *node.expressions]]
            kinds = {v.kind for v in values if v.kind != "null"}
            expr = values[-1].expr
            for val in reversed(values[:-1]):  # lazily: later arguments only when needed
                first, again = self.bind(val)
                expr = A.if_(A.is_(first, None, negate=True), again, expr)
            return A.Val(expr, kinds.pop() if len(kinds) == 1 else "any")
        self.unsupported(node)

    def arithmetic(self, node: exp.Expr) -> A.Val:
        self.expect(node, {"this", "expression", "typed", "safe"})
        name, pyop = _ARITHMETIC[type(node)]
        left, right = self.value(node.this), self.value(node.expression)
        if left.const and right.const:
            return A.Val(A.const(HELPERS[name](left.value, right.value)), "num", const=True)
        if pyop is None or any(v.const and A.const_family(v.value) != "num" for v in (left, right)):
            return A.Val(A.call(f"_{name}", left.expr, right.expr), "num")
        (lf, la), (rf, ra) = self.bind(left), self.bind(right)
        tests = [
            self.is_family(f, v.kind, "num") for f, v in ((lf, left), (rf, right)) if not v.const
        ]
        # "&", not "and": both operands are always evaluated, so a missing field always raises.
        test = tests[0] if len(tests) == 1 else ast.BinOp(tests[0], ast.BitAnd(), tests[1])
        return A.Val(A.if_(test, ast.BinOp(left=la, op=pyop(), right=ra), None), "num")

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
            problem = segment_problem(name)
            if problem is None and "." in name:  # it would be ambiguous in dotted field paths
                problem = f"field name {name!r} contains '.'"
            if problem:
                self.error(part, problem, PATH_HINT)
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
    # Nothing is executed here: the function's code object is taken out of the compiled module
    # and bound to a namespace holding only our helpers (builtins are empty). It was built from
    # the ast above, out of allow-listed sqlglot nodes; user text is only in constants.
    (function_code,) = (c for c in code.co_consts if isinstance(c, types.CodeType))
    condition = types.FunctionType(function_code, namespace, "_condition")
    fields = frozenset(compiler.fields)
    return CompiledCondition(text, condition, fields, python_source, returned.value)


_FUSED_TEMPLATE = """
def _conditions(r):
    _hits = ()
    return _hits
"""
_HIT_TEMPLATE = """
if _condition:
    _hits += (_index,)
"""
_LOCAL = re.compile(r"_[kt][0-9]+")  # a compiler's constants (_k) and temporaries (_t)


class _Rename(ast.NodeTransformer):
    """Gives one condition's constants and temporaries names of their own: ``_k0`` -> ``_c3_k0``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if _LOCAL.fullmatch(node.id):
            node.id = self.prefix + node.id
        return node


def _field_read(node: ast.AST) -> str | None:
    """The top-level field ``node`` reads (``r['amount']``), else None."""
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "r"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.slice.value
    return None


def _always_evaluated(node: ast.expr) -> list[ast.AST]:
    """The nodes evaluated whenever ``node`` is: an AND/OR's first operand, a conditional
    expression's test, a comparison's first operand, and what an attribute, walrus, subscript,
    call or arithmetic evaluates first; not what short-circuiting may skip."""
    found: list[ast.AST] = [node]
    if isinstance(node, ast.BoolOp):
        found += _always_evaluated(node.values[0])
    elif isinstance(node, ast.IfExp):
        found += _always_evaluated(node.test)
    elif isinstance(node, ast.Compare):
        found += _always_evaluated(node.left) + _always_evaluated(node.comparators[0])
    elif isinstance(node, ast.Attribute | ast.NamedExpr):
        found += _always_evaluated(node.value)
    elif isinstance(node, ast.Subscript):
        found += _always_evaluated(node.value) + _always_evaluated(node.slice)
    elif isinstance(node, ast.UnaryOp):
        found += _always_evaluated(node.operand)
    elif isinstance(node, ast.BinOp):
        found += _always_evaluated(node.left) + _always_evaluated(node.right)
    elif isinstance(node, ast.Call):
        found += _always_evaluated(node.func)
        for arg in node.args:
            found += _always_evaluated(arg)
    return found


# The classes a generated condition checks a value against (sql_runtime.RUNTIME): runtime
# helpers, the same in every condition, so a check can move to the fused function's start.
_CLASS_HELPERS = frozenset({"_NUM", "_ORD", "_str", "_bool"})


class _SharedReads(ast.NodeTransformer):
    """One condition's reads of the shared fields: ``(_t0 := r['amount']).__class__ in _NUM``
    becomes the flag computed once, the temporary ``_t0`` the shared value, and any other read
    of the field the shared value."""

    def __init__(self, shared: dict[str, str], flags: dict[tuple[str, str, str], str]) -> None:
        self.shared = shared  # field -> the name holding its value
        self.flags = flags  # (field, operator, helper) -> the name holding the class check
        self.aliases: dict[str, str] = {}  # this condition's temporaries -> shared names

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        left = node.left
        if (
            len(node.ops) == 1
            and isinstance(node.ops[0], ast.In | ast.Is)
            and isinstance(node.comparators[0], ast.Name)
            and node.comparators[0].id in _CLASS_HELPERS  # (never a condition's temporary)
            and isinstance(left, ast.Attribute)
            and left.attr == "__class__"
            and isinstance(left.value, ast.NamedExpr)
            and (field := _field_read(left.value.value)) in self.shared
        ):
            check = (field, type(node.ops[0]).__name__, node.comparators[0].id)
            if check not in self.flags:
                self.flags[check] = f"_class{len(self.flags)}"
            self.aliases[left.value.target.id] = self.shared[field]
            return A.load(self.flags[check])
        self.generic_visit(node)
        return node

    def visit_Subscript(self, node: ast.Subscript) -> ast.expr:
        field = _field_read(node)
        if field in self.shared:
            return A.load(self.shared[field])
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if isinstance(node.ctx, ast.Load) and node.id in self.aliases:
            return A.load(self.aliases[node.id])
        return node


def _share_field_reads(steps: list[ast.If]) -> list[ast.stmt]:
    """Read a field once for all conditions, and check its class once, where that changes
    nothing but the cost: a top-level field that some condition reads whenever it is evaluated
    (so the fused function reads it on every call, and raises if it is missing, as before),
    read by two conditions or more. The steps, with those reads first."""
    always: set[str] = set()
    uses: dict[str, int] = {}
    for step in steps:
        always.update(f for n in _always_evaluated(step.test) if (f := _field_read(n)))
        for node in ast.walk(step.test):
            if (field := _field_read(node)) is not None:
                uses[field] = uses.get(field, 0) + 1
    shared = {f: f"_field{i}" for i, f in enumerate(sorted(f for f in always if uses[f] > 1))}
    if not shared:
        return list(steps)
    flags: dict[tuple[str, str, str], str] = {}
    # Two passes: a temporary is loaded after the check that binds it, possibly in a later
    # part of the tree, so the aliases are known only once the whole condition was seen.
    for step in steps:
        rewrite = _SharedReads(shared, flags)
        step.test = rewrite.visit(rewrite.visit(step.test))
    reads: list[ast.stmt] = []
    for field, name in shared.items():
        reads += ast.parse(f"{name} = r[_FIELD]").body  # our template; the field is a constant
        assign = reads[-1]
        assert isinstance(assign, ast.Assign) and isinstance(assign.value, ast.Subscript)
        assign.value.slice = A.const(field)
    for (field, op, helper), name in flags.items():
        check = "is" if op == "Is" else "in"
        (assign,) = ast.parse(f"{name} = {shared[field]}.__class__ {check} {helper}").body
        reads.append(assign)
    return reads + list(steps)


def fuse_conditions(conditions: list[CompiledCondition]) -> FusedConditions:
    """One function evaluating every condition on a record: the indices of those that are TRUE.

    Cheaper than calling each predicate in turn (one call, no per-rule loop). It does not catch
    anything: when a condition would raise (a missing field, a type error), the fused function
    raises and the caller evaluates the predicates one by one, which say which rule and why.
    The code is the conditions' own generated expressions (see :func:`compile_condition`), each
    with its constants and temporaries renamed apart, bound to the union of their namespaces.
    """
    module = ast.parse(_FUSED_TEMPLATE)  # our constant templates, never user text
    function = module.body[0]
    assert isinstance(function, ast.FunctionDef)
    namespace: dict[str, Any] = {}
    steps: list[ast.If] = []
    for index, condition in enumerate(conditions):
        if condition.tree is None:
            raise ValueError(f"condition {condition.text!r} has no expression to fuse")
        prefix = f"_c{index}"
        for name, value in condition.fn.__globals__.items():
            if _LOCAL.fullmatch(name):
                namespace[prefix + name] = value
            # the runtime helpers: the same objects in every condition
            elif name != "_FIELDS" and namespace.setdefault(name, value) is not value:
                raise ValueError(f"conditions disagree on the helper {name!r}")
        (step,) = ast.parse(_HIT_TEMPLATE).body
        assert isinstance(step, ast.If)
        step.test = _Rename(prefix).visit(copy.deepcopy(condition.tree))
        hit = step.body[0]
        assert isinstance(hit, ast.AugAssign) and isinstance(hit.value, ast.Tuple)
        hit.value.elts = [A.const(index)]
        steps.append(step)
    function.body[1:1] = _share_field_reads(steps)
    ast.fix_missing_locations(module)
    code = compile(module, "<conditions>", "exec", dont_inherit=True)
    # As for one condition: nothing is executed, the code object is bound to the namespace.
    (function_code,) = (c for c in code.co_consts if isinstance(c, types.CodeType))
    return types.FunctionType(function_code, namespace, "_conditions")
