"""Small builders of Python ``ast`` nodes used by the SQL condition compiler.

Every node the compiler emits is built here or in :mod:`streamproc.sql`; names loaded by the
generated code are only those of ``streamproc.sql_runtime.RUNTIME`` and the compiler's own
temporaries.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from streamproc.sql_runtime import FAMILIES, Family, Kind


@dataclass(frozen=True, slots=True)
class Val:
    expr: ast.expr
    kind: Kind
    const: bool = False  # expr is an ast.Constant holding the final value

    @property
    def value(self) -> Any:
        return self.expr.value if isinstance(self.expr, ast.Constant) else None


def load(name: str) -> ast.Name:
    return ast.Name(id=name, ctx=ast.Load())


def const(value: Any) -> ast.Constant:
    return ast.Constant(value=value)


def cmp(left: ast.expr, op: ast.cmpop, right: ast.expr) -> ast.Compare:
    return ast.Compare(left=left, ops=[op], comparators=[right])


def is_(left: ast.expr, value: bool | None, negate: bool = False) -> ast.expr:
    if isinstance(left, ast.Constant):  # fold: "'a' is None" is a SyntaxWarning
        return const((left.value is value) != negate)
    return cmp(left, ast.IsNot() if negate else ast.Is(), const(value))


def if_(test: ast.expr, body: ast.expr | bool | None, orelse: ast.expr | bool | None) -> ast.IfExp:
    body, orelse = (x if isinstance(x, ast.expr) else const(x) for x in (body, orelse))
    return ast.IfExp(test=test, body=body, orelse=orelse)


def call(function: str | ast.expr, *args: ast.expr) -> ast.Call:
    func = load(function) if isinstance(function, str) else function
    return ast.Call(func=func, args=list(args), keywords=[])


def attr(subject: ast.expr, name: str) -> ast.Attribute:
    return ast.Attribute(value=subject, attr=name, ctx=ast.Load())


def const_family(value: Any) -> Family | None:
    return FAMILIES.get(type(value))
