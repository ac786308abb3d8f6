"""Compile a windowed SQL rule into a :class:`~streamproc.windowspec.WindowRule`.

Parsed with sqlglot; the accepted shape (keywords case-insensitive, names case-sensitive)::

    SELECT <GROUP BY fields and aggregates [AS alias]> FROM <stream name, e.g. transactions>
    [WHERE <condition on one record>] GROUP BY [<field>, ...] <window>
    [HAVING <condition on aggregates, their aliases and GROUP BY fields>]

``<window>``: ``TUMBLE(ts, size)``, ``HOP(ts, slide, size)`` (size a multiple of slide),
``SESSION(ts, gap)`` or ``SLIDING(ts, range)`` (per event, the range up to it). ``ts`` is the
event-time field path, ``ARRIVAL_TIME`` (unquoted) for the arrival time, or left out for
``time_field_default``. Sizes: ``INTERVAL 'N' UNIT``, ``INTERVAL N UNIT``, ``INTERVAL 'N unit'``;
N a positive integer, UNIT MILLISECOND, SECOND, MINUTE, HOUR or DAY (or plural). SLIDING can
also be written ``AGG(x) OVER (PARTITION BY k ORDER BY ts RANGE [BETWEEN] INTERVAL ... PRECEDING
[AND CURRENT ROW])``: one OVER for every aggregate, QUALIFY in place of HAVING.

Aggregates: COUNT(*), COUNT(x), COUNT(DISTINCT x), SUM(x), AVG(x), MIN(x), MAX(x) over a field
path; canonical name: upper-case function and dotted path (``SUM(tx.amount)``). HAVING names one
by writing it again or by its alias; one only HAVING uses is hidden (not in ``select``). WHERE
and HAVING compile with :func:`streamproc.sql.compile_condition`; HAVING reads a mapping keyed by
each aggregate's ``name`` and ``alias`` and each GROUP BY path as one string. Mistakes raise
RuleCompileError with the 1-based line and column of the offending token and a hint.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, get_args

from sqlglot import Token, TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

from streamproc import windowspec as ws
from streamproc.errors import MissingFieldError, RuleCompileError
from streamproc.records import SEVERITIES, Severity
from streamproc.sql import compile_condition
from streamproc.sql_runtime import PATH_HINT, segment_problem, split_path

__all__ = ["ARRIVAL_TIME", "compile_window_sql"]

ARRIVAL_TIME = "ARRIVAL_TIME"  # unquoted, as a window's time argument: the record's arrival time

Predicate = Callable[[Mapping[str, Any]], bool]
Reference = tuple[ws.AggregateFunction, str | None, str]  # function, field, canonical name
_AGGREGATES: dict[type[exp.Expr], ws.AggregateFunction]
_AGGREGATES = {exp.Count: "count", exp.Sum: "sum", exp.Avg: "avg", exp.Min: "min", exp.Max: "max"}
_WINDOWS: dict[str, tuple[Callable[..., ws.WindowKind], tuple[str, ...]]] = {
    "TUMBLE": (ws.Tumble, ("size",)),
    "HOP": (ws.Hop, ("slide", "size")),
    "SESSION": (ws.Session, ("gap",)),
    "SLIDING": (ws.Sliding, ("range",)),
}
_UNITS = {"MILLISECOND": 1, "SECOND": 1000, "MINUTE": 60_000, "HOUR": 3_600_000, "DAY": 86_400_000}
_DEPTH = {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}
_CLAUSE_ENDS = {TokenType.GROUP_BY, TokenType.HAVING, TokenType.QUALIFY, TokenType.SEMICOLON}
_CLAUSES = ("expressions", "from_", "where", "group", "having", "qualify")
_CLAUSE_NAMES = {"joins": "JOIN", "order": "ORDER BY", "distinct": "SELECT DISTINCT"}
_OVER_PARTS = ("this", "partition_by", "order", "spec", "over")
_ALIAS = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SHAPE = "e.g. SELECT card_id, COUNT(*) AS n FROM transactions GROUP BY card_id, <window>"
_WINDOW_HINT = "end GROUP BY with TUMBLE(ts, size), HOP(ts, slide, size), SESSION or SLIDING"
_AGGREGATE_HINT = "use COUNT(*), COUNT(x), COUNT(DISTINCT x), SUM(x), AVG(x), MIN(x) or MAX(x)"
_FIELD_HINT = "aggregate a record field, e.g. SUM(amount); filter records with WHERE"
_INTERVAL_HINT = "write e.g. INTERVAL '10' MINUTE (MILLISECOND, SECOND, MINUTE, HOUR or DAY)"
_OVER_HINT = "write OVER (PARTITION BY key ORDER BY ts RANGE INTERVAL '10' MINUTE PRECEDING)"


class _WindowCompiler:
    """One compilation: checks the sqlglot tree and collects the parts of a WindowRule."""

    def __init__(self, sql: str, origin: str | None, rule: str | None, default: str | None):
        self.sql, self.origin, self.rule, self.default = sql, origin, rule, default
        self.tokens: list[Token] = []
        self.group_by: list[str] = []
        self.aggregates: dict[str, ws.Aggregate] = {}  # by canonical name, selected ones first
        self.select: list[str] = []
        self.window: ws.WindowKind = ws.Tumble(1)
        self.time_field: str | None = default
        self.over: tuple[tuple[str, ...], str | None, int] | None = None  # the OVER form's spec
        self.having_reads: frozenset[str] = frozenset()

    def fail(self, offset: int | None, message: str, hint: str | None = None) -> NoReturn:
        line = column = None
        if offset is not None:
            line = self.sql.count("\n", 0, offset) + 1
            column = offset - (self.sql.rfind("\n", 0, offset) + 1) + 1
            message = f"{message} (SQL line {line}, column {column})"
        raise RuleCompileError(
            message, file=self.origin, line=line, column=column, rule=self.rule, hint=hint
        )

    def error(self, node: exp.Expr, message: str, hint: str | None = None) -> NoReturn:
        self.fail(self.offset(node), message, hint)

    def offset(self, node: exp.Expr) -> int | None:
        """Where a node starts. Some nodes (INTERVAL, JOIN, DISTINCT) carry no position, only
        their children do: then look for the node's first word before its first child."""
        first = min((n.meta["start"] for n in node.walk() if "start" in n.meta), default=None)
        head = re.match(r"\w+|\S", node.sql())
        if "start" in node.meta or head is None:
            return first
        text, word = self.sql.upper(), head[0].upper()
        found = text.find(word) if first is None else text.rfind(word, 0, first + len(word))
        return found if found >= 0 else first

    def parse(self) -> exp.Select:
        dialect = Dialect.get_or_raise(None)
        try:
            self.tokens = dialect.tokenize(self.sql)
            for token, after in itertools.pairwise(self.tokens):  # SESSION(...) is our window
                if token.token_type is TokenType.SESSION and after.token_type is TokenType.L_PAREN:
                    token.token_type = TokenType.VAR
            trees = dialect.parser().parse(self.tokens, self.sql)
            # INTERVAL 10 MINUTE and INTERVAL '10 minutes' come out of sqlglot without positions
            nodes = [n for t in filter(None, trees) for n in t.walk(bfs=False)]
            intervals = [node for node in nodes if isinstance(node, exp.Interval)]
            starts = [t.start for t in self.tokens if t.token_type is TokenType.INTERVAL]
            if len(starts) == len(intervals):  # both in text order
                for node, start in zip(intervals, starts, strict=True):
                    node.meta.update(start=start, end=start + len("INTERVAL") - 1)
        except ParseError as parse_error:
            details = parse_error.errors[0] if parse_error.errors else {}
            line, column = details.get("line"), details.get("col")
            highlight = str(details.get("highlight") or "")
            if column and highlight and "\n" not in highlight and column >= len(highlight):
                column = column - len(highlight) + 1  # sqlglot points at the end of the token
            description = str(details.get("description") or parse_error)
            description = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", description)
            near = f" near {highlight!r}" if highlight else ""
            offset = _to_offset(self.sql, line, column)
            self.fail(offset, f"syntax error{near}: {description}", _SHAPE)
        except TokenError:
            self.fail(None, "cannot tokenize: is a quote unterminated?", "quote strings as 'text'")
        statements = [tree for tree in trees if tree is not None] or [exp.Null()]
        if len(statements) != 1 or not isinstance(statements[0], exp.Select):
            self.error(statements[-1], "a window rule is exactly one SELECT statement", _SHAPE)
        return statements[0]

    def clause_span(self, keyword: TokenType) -> tuple[int, int, int]:
        """Where the top-level ``keyword`` starts, and [start, end) of its text up to the next."""
        depth, found = 0, None
        for token in self.tokens:
            if depth == 0 and found and token.token_type in _CLAUSE_ENDS:
                return found.start, found.end + 1, token.start
            if depth == 0 and not found and token.token_type is keyword:
                found = token
            depth += _DEPTH.get(token.token_type, 0)
        assert found is not None  # only asked for clauses the tree has
        return found.start, found.end + 1, len(self.sql)

    def span(self, node: exp.Expr) -> tuple[int, int]:
        """[start, end) of a node's text: its tokens and the parentheses they opened."""
        start = self.offset(node) or 0
        last = max(n.meta["end"] for n in node.walk() if "end" in n.meta)
        depth, end = 0, start
        for token in itertools.dropwhile(lambda t: t.start < start, self.tokens):
            if token.start > last and depth <= 0:
                break
            depth, end = depth + _DEPTH.get(token.token_type, 0), token.end + 1
        return start, end

    def compile(self) -> tuple[Predicate | None, Predicate | None]:
        """Check the statement and collect its parts; return the (where, having) predicates."""
        tree = self.parse()
        for key, value in tree.args.items():
            if key not in _CLAUSES and value not in (None, False, []):
                node = value[0] if isinstance(value, list) else value
                node = node if isinstance(node, exp.Expr) else tree
                what = _CLAUSE_NAMES.get(key, key.rstrip("_").upper())
                self.error(node, f"{what} is not supported", "a rule is one SELECT over one stream")
        group = tree.args.get("group")
        for node in tree.walk():
            if node is not tree and isinstance(node, exp.Query | exp.Subquery):
                self.error(node, "subqueries are not supported", "a window rule reads one stream")
            if _is_window(node) and node.parent is not group:
                self.error(node, f"{node.name.upper()}() belongs in GROUP BY", _WINDOW_HINT)
            if isinstance(node, exp.Window) and group is not None:
                self.error(node, "OVER (...) cannot be combined with GROUP BY", _WINDOW_HINT)
        source = tree.args.get("from_")
        if source is None:
            self.fail(self.tokens[0].start, "FROM <stream> is missing", _SHAPE)
        table = source.this
        extra = any(v for k, v in table.args.items() if k not in ("this", "db", "catalog"))
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier) or extra:
            self.error(table, "FROM takes one stream name, e.g. FROM transactions", _SHAPE)
        where = tree.args.get("where")
        for node in where.find_all(exp.AggFunc, exp.Window) if where else ():
            message = f"aggregate {node.sql()} is not allowed in WHERE"
            self.error(node, message, "WHERE filters single records; use HAVING for aggregates")
        condition, keyword = tree.args.get("having"), TokenType.HAVING
        if group is not None:
            self.group_form(group)
            if tree.args.get("qualify"):
                self.error(tree.args["qualify"], "QUALIFY goes with OVER (...)", "write HAVING")
        elif (window := tree.find(exp.Window)) is not None:
            self.over = partition, self.time_field, range_ms = self.over_spec(window)
            self.group_by, self.window = list(partition), ws.Sliding(range_ms)
            if condition is not None:
                self.error(condition, "HAVING goes with GROUP BY", "with OVER (...) write QUALIFY")
            condition, keyword = tree.args.get("qualify"), TokenType.QUALIFY
        else:
            node = next(tree.find_all(exp.AggFunc), tree)
            self.error(node, "a window rule needs a window in GROUP BY", _WINDOW_HINT)
        self.select_list(tree)
        compiled_where = None if where is None else self.condition(TokenType.WHERE, [])
        if condition is None:
            return compiled_where, None
        references = self.references(condition.this)
        self.having_reads = frozenset(name for _node, name in references)
        return compiled_where, self.condition(keyword, references)

    def group_form(self, group: exp.Expr) -> None:
        for key, value in group.args.items():
            if key != "expressions" and value:
                self.error(group, f"GROUP BY {key.upper()} is not supported", _WINDOW_HINT)
        windows = [node for node in group.expressions if _is_window(node)]
        for node in group.expressions:
            if not _is_window(node):
                self.add_unique(self.group_by, node, self.field_path(node, "a GROUP BY item"))
        if not windows:
            self.fail(
                self.clause_span(TokenType.GROUP_BY)[0], "GROUP BY has no window", _WINDOW_HINT
            )
        if len(windows) > 1:
            self.error(windows[1], "GROUP BY has more than one window", "a rule has one window")
        name = windows[0].name.upper()
        make, params = _WINDOWS[name]
        args = list(windows[0].expressions)
        if args and not isinstance(args[0], exp.Interval):
            self.time_field = self.time_reference(args.pop(0), f"the time argument of {name}")
        if len(args) != len(params) or not args:
            message = f"{name} takes {name}(ts, {', '.join(params)})"
            self.error(windows[0], message, _WINDOW_HINT)
        sizes = [self.interval_ms(a, f"the {name} {p}") for a, p in zip(args, params, strict=True)]
        if name == "HOP" and sizes[1] % sizes[0]:
            message = f"the HOP size ({sizes[1]} ms) is not a multiple of the slide ({sizes[0]} ms)"
            self.error(args[1], message, "e.g. HOP(ts, INTERVAL '1' MINUTE, INTERVAL '10' MINUTE)")
        self.window = make(*sizes)

    def over_spec(self, node: exp.Window) -> tuple[tuple[str, ...], str | None, int]:
        """(PARTITION BY paths, time field, range in ms) of an OVER clause."""
        if any(v for k, v in node.args.items() if k not in _OVER_PARTS):
            self.error(node, "named windows and OVER options are not supported", _OVER_HINT)
        partition: list[str] = []
        for item in node.args.get("partition_by") or []:
            self.add_unique(partition, item, self.field_path(item, "a PARTITION BY item"))
        time_field, order = self.default, node.args.get("order")
        if order is not None:
            if len(order.expressions) != 1 or order.expressions[0].args.get("desc"):
                self.error(order, "ORDER BY in OVER names the event time, ascending", _OVER_HINT)
            time_field = self.time_reference(order.expressions[0].this, "ORDER BY")
        frame = node.args["spec"].args if node.args.get("spec") else {}
        start = frame.get("start")
        if (frame.get("kind"), frame.get("start_side")) != ("RANGE", "PRECEDING") or (
            frame.get("end") not in (None, "CURRENT ROW") or not isinstance(start, exp.Expr)
        ):
            self.error(node.args.get("spec") or node, "OVER needs RANGE ... PRECEDING", _OVER_HINT)
        return tuple(partition), time_field, self.interval_ms(start, "the RANGE")

    def select_list(self, tree: exp.Select) -> None:
        for item in tree.expressions:
            alias = item.args.get("alias") if isinstance(item, exp.Alias) else None
            node = item.unalias()
            if isinstance(node.this if isinstance(node, exp.Column) else node, exp.Star):
                self.error(node, "SELECT * is not supported", "list GROUP BY fields and aggregates")
            if isinstance(node, exp.Column | exp.Dot):
                path = self.field_path(node, "a SELECT column")
                where = "PARTITION BY" if self.over else "GROUP BY"
                if path not in self.group_by:
                    hint = f"add it to {where} or aggregate it, e.g. COUNT(DISTINCT {path})"
                    self.error(node, f"column {path} is neither in {where} nor aggregated", hint)
                if alias is not None:
                    self.error(alias, "only aggregates can have an alias", "select the field as is")
                self.add_unique(self.select, node, path)
                continue
            reference = self.reference(node, in_select=True)
            if reference is None:
                hint = "compute with aggregates in HAVING, e.g. HAVING SUM(amount) / COUNT(*) > 9"
                self.error(node, f"SELECT lists fields and aggregates, not {node.sql()!r}", hint)
            name = reference[2]
            output = name if alias is None else alias.name
            if alias is not None and (output in self.group_by or not _ALIAS.fullmatch(output)):
                self.error(alias, f"invalid alias {output!r}", "a new name: letters, digits, _")
            if name in self.aggregates:
                self.error(node, f"{name} is selected twice", "select each aggregate once")
            self.add_unique(self.select, alias or node, output)
            self.aggregates[name] = ws.Aggregate(*reference, alias=output)

    def reference(self, node: exp.Expr, in_select: bool) -> Reference | None:
        """(function, field, canonical name) of an aggregate (OVER form: windowed), else None."""
        if isinstance(node, exp.Window):
            if self.over_spec(node) != self.over:
                self.error(node, "every aggregate must have the same OVER (...)", _OVER_HINT)
            node = node.this
        elif isinstance(node, exp.AggFunc) and self.over is not None:
            self.error(node, f"{node.sql()} needs the OVER (...) of the others", _OVER_HINT)
        if not isinstance(node, exp.Func):
            return None
        label = node.name.upper() if isinstance(node, exp.Anonymous) else node.sql_name()
        function = _AGGREGATES.get(type(node))
        if function is None:
            what = "aggregate" if isinstance(node, exp.AggFunc) else "unknown function"
            self.error(node, f"{what} {label}() is not supported here", _AGGREGATE_HINT)
        argument = node.this
        extra = any(value for key, value in node.args.items() if key not in ("this", "big_int"))
        if extra or not isinstance(argument, exp.Expr):
            self.error(node, f"{label}() takes exactly one argument", _AGGREGATE_HINT)
        if isinstance(argument, exp.Star) and function == "count":
            return "count", None, "COUNT(*)"
        distinct = isinstance(argument, exp.Distinct) and function == "count"
        if distinct and len(argument.expressions) == 1:
            field = self.field_path(argument.expressions[0], "the argument of COUNT(DISTINCT)")
            return "count_distinct", field, f"COUNT(DISTINCT {field})"
        field = self.field_path(argument, f"the argument of {label}")  # SUM(*), SUM(DISTINCT x)
        return function, field, f"{label}({field})"

    def references(self, condition: exp.Expr) -> list[tuple[exp.Expr, str]]:
        """Each aggregate and name in HAVING/QUALIFY, with the mapping key it reads."""
        found: list[tuple[exp.Expr, str]] = []
        for node in _operands(condition):
            if isinstance(node, exp.Column | exp.Dot):
                path = self.field_path(node, "a HAVING operand")
                if path not in self.group_by and path not in self.select:
                    hint = "HAVING can use aggregates, their aliases and the GROUP BY fields"
                    self.error(node, f"{path} is not an alias or a GROUP BY field", hint)
                found.append((node, path))
                continue
            reference = self.reference(node, in_select=False)
            assert reference is not None  # _operands yields field paths and aggregates only
            if reference[2] not in self.aggregates:  # a hidden aggregate
                self.aggregates[reference[2]] = ws.Aggregate(*reference, alias=reference[2])
            found.append((node, reference[2]))
        return found

    def condition(self, keyword: TokenType, references: list[tuple[exp.Expr, str]]) -> Predicate:
        """Compile the clause after ``keyword`` with streamproc.sql, each reference replaced by a
        quoted name of its mapping key. The SQL before the clause is blanked, so positions in the
        compiled text are those of the SQL (shifted after a replacement: mapped back)."""
        _, start, end = self.clause_span(keyword)
        text = re.sub(r"[^\n]", " ", self.sql[:start])
        moves: list[tuple[int, int, int, int]] = []  # new start, new end, old start, old end
        reads: dict[str, str] = {}  # name in the compiled text -> mapping key
        position = start
        for (old_start, old_end), key in sorted((self.span(n), key) for n, key in references):
            known = next((n for n, k in reads.items() if k == key), f"#{len(reads)}")
            name = key if "." not in key and key[0] != "#" and not segment_problem(key) else known
            reads[name] = key
            quoted = '"' + name.replace('"', '""') + '"'
            text += self.sql[position:old_start]
            moves.append((len(text), len(text) + len(quoted), old_start, old_end))
            text, position = text + quoted, old_end
        try:
            compiled = compile_condition(text + self.sql[position:end], rule=self.rule)
        except RuleCompileError as error:
            offset = new = _to_offset(text + self.sql[position:end], error.line, error.column)
            for new_start, new_end, old_start, old_end in moves:
                if new is None or new < new_start:
                    break
                offset = old_start if new < new_end else new - new_end + old_end
            message = re.sub(r" \(condition line \d+, column \d+\)$", "", error.message)
            self.fail(offset, message, error.hint)
        if all(name == key for name, key in reads.items()):
            return compiled.fn
        fn, renames = compiled.fn, tuple(reads.items())

        def renamed(values: Mapping[str, Any]) -> bool:  # keys that are no names as they are
            try:
                return fn({name: values[key] for name, key in renames})
            except KeyError as error:
                raise MissingFieldError(str(error.args[0])) from None

        return renamed

    def field_path(self, node: exp.Expr, what: str) -> str:
        """The dotted path of a field reference: a.b.c.d is a Column, deeper paths add Dots."""
        parts: list[exp.Expr] = []
        root = node
        while isinstance(root, exp.Dot):
            parts.insert(0, root.expression)
            root = root.this
        parts[:0] = [root.args[k] for k in ("catalog", "db", "table", "this") if root.args.get(k)]
        if not isinstance(root, exp.Column) or not all(
            isinstance(p, exp.Identifier) for p in parts
        ):
            self.error(node, f"{what} must be a field path, not {node.sql()}", _FIELD_HINT)
        for part in parts:
            problem = segment_problem(name := str(part.this))
            if problem or "." in name:
                self.error(part, problem or f"field name {name!r} contains '.'", PATH_HINT)
        return ".".join(str(part.this) for part in parts)

    def time_reference(self, node: exp.Expr, what: str) -> str | None:
        """A field path, or None for the (unquoted) name ARRIVAL_TIME: the arrival time."""
        return None if node.sql() == ARRIVAL_TIME else self.field_path(node, what)

    def interval_ms(self, node: exp.Expr, what: str) -> int:
        if not isinstance(node, exp.Interval):
            self.error(node, f"{what} must be an INTERVAL, not {node.sql()}", _INTERVAL_HINT)
        unit = node.args.get("unit")
        unit_name = unit.name.upper() if isinstance(unit, exp.Var) else ""
        factor = _UNITS.get(unit_name) or _UNITS.get(unit_name.removesuffix("S"))
        number = str(node.this.this).strip() if isinstance(node.this, exp.Literal) else ""
        if factor is None or not re.fullmatch(r"[+-]?[0-9]+", number):
            self.error(node, f"{what}: {node.sql()} does not parse", _INTERVAL_HINT)
        if int(number) <= 0:
            self.error(node, f"{what} must be positive, not {node.sql()}", _INTERVAL_HINT)
        return int(number) * factor

    def add_unique(self, names: list[str], node: exp.Expr, name: str) -> None:
        if name in names:
            self.error(node, f"{name} is listed twice", "list each name once")
        names.append(name)


def _is_window(node: exp.Expr) -> bool:
    return isinstance(node, exp.Anonymous) and node.name.upper() in _WINDOWS


def _operands(node: exp.Expr) -> Iterator[exp.Expr]:
    """Aggregates (windowed or not) and field paths of a condition, without their insides."""
    if isinstance(node, exp.AggFunc | exp.Window | exp.Column | exp.Dot):
        yield node
        return
    for child in node.iter_expressions():
        yield from _operands(child)


def _to_offset(text: str, line: int | None, column: int | None) -> int | None:
    if line is None or column is None:
        return None
    return sum(len(earlier) + 1 for earlier in text.split("\n")[: line - 1]) + column - 1


def compile_window_sql(
    sql: str,
    *,
    origin: str | None = None,
    rule: str | None = None,
    name: str,
    version: int,
    emit: ws.EmitMode = "final",
    allowed_lateness_ms: int = 0,
    late: ws.LatePolicy = "dead_letter",
    severity: Severity = "MEDIUM",
    sinks: Sequence[str] = (),
    description: str = "",
    time_field_default: str | None = "event_time",
) -> ws.WindowRule:
    """Compile a window rule's SQL (grammar: the module docstring) and options. ``origin`` labels
    errors (their ``file``) and becomes ``WindowRule.origin``; ``rule`` labels errors (default:
    ``name``). RuleCompileError has the line and column in ``sql`` for SQL mistakes."""
    label = rule if rule is not None else name if isinstance(name, str) else None

    def invalid(message: str, hint: str | None = None) -> NoReturn:
        raise RuleCompileError(message, file=origin, rule=label, hint=hint)

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        invalid(f"invalid rule name {name!r}", "lower-case letters, digits and '_', e.g. velocity")
    if type(version) is not int or version < 1:
        invalid(f"version must be an integer >= 1, got {version!r}", "bump it on every change")
    choices = (("emit", emit, get_args(ws.EmitMode)), ("late", late, get_args(ws.LatePolicy)))
    for option, value, allowed in (*choices, ("severity", severity, SEVERITIES)):
        if value not in allowed:
            invalid(f"unknown {option} {value!r}", f"use one of {', '.join(allowed)}")
    if type(allowed_lateness_ms) is not int or allowed_lateness_ms < 0:
        invalid(f"allowed lateness must be >= 0 ms, got {allowed_lateness_ms!r}")
    if isinstance(sinks, str) or not all(isinstance(s, str) and s for s in sinks):
        invalid(f"sinks must be a list of sink names, got {sinks!r}")
    if not isinstance(description, str):
        invalid("description must be a string")
    if time_field_default is not None:
        split_path(time_field_default)  # a RuleCompileError for an invalid path
    if not isinstance(sql, str) or not sql.strip():
        invalid("the SQL is empty", _SHAPE)
    compiler = _WindowCompiler(sql, origin, label, time_field_default)
    try:
        where, having = compiler.compile()
    except RecursionError:
        invalid("the SQL is nested too deeply")
    return ws.WindowRule(
        name=name,
        version=version,
        window=compiler.window,
        group_by=tuple(compiler.group_by),
        aggregates=tuple(compiler.aggregates.values()),
        select=tuple(compiler.select),
        having=having,
        where=where,
        time_field=compiler.time_field,
        emit=emit,
        allowed_lateness_ms=allowed_lateness_ms,
        late=late,
        severity=severity,
        sinks=tuple(sinks),
        description=description,
        sql=sql,
        origin=origin or "",
        having_reads=compiler.having_reads if having is not None else None,
    )
