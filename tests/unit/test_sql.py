"""The SQL condition compiler: operators, NULL semantics, errors, and a reference model.

The reference evaluator at the bottom implements the documented semantics directly over Python
values (no code generation); hypothesis checks the compiled predicates against it.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.errors import MissingFieldError, RuleCompileError
from streamproc.sql import compile_condition, field_getter, fuse_conditions

TX = {
    "tx_id": "t-1",
    "card_id": "c-1",
    "amount": 2500,
    "price": 19.5,
    "currency": "USD",
    "merchant": {"name": "Acme", "country": "US", "geo": {"lat": 1.5}},
    "state": "NY",
    "home_state": "CA",
    "quantity": -2,
    "flag": True,
    "off": False,
    "note": None,
    "tags": ["a", "b"],
    "odd name": 7,
    "name": "a.cde",
}


def matches(condition: str, record: dict[str, Any] | None = None) -> bool:
    return compile_condition(condition).fn(TX if record is None else record)


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("amount = 2500", True),
        ("amount = 2500.0", True),
        ("amount = 2501", False),
        ("amount <> 2500", False),
        ("amount != 2501", True),
        ("amount < 2501", True),
        ("amount < 2500", False),
        ("amount <= 2500", True),
        ("amount > 2499.5", True),
        ("amount > 2500", False),
        ("amount >= 2500", True),
        ("2000 < amount", True),
        ("state = 'NY'", True),
        ("state < 'OH'", True),
        ("state <> home_state", True),
        ("state = home_state", False),
        ("price * 2 = 39", True),
        ("amount + 1 = 2501", True),
        ("amount - 500 = 2000", True),
        ("amount / 1000 = 2.5", True),  # true division
        ("7 / 2 = 3.5", True),
        ("amount % 1000 = 500", True),
        ("-7 % 3 = -1", True),  # SQL MOD: sign of the dividend
        ("7 % -3 = 1", True),
        ("-quantity = 2", True),
        ("-(amount) < 0", True),
        ("(amount + 500) * 2 = 6000", True),
        ("amount + 500 * 2 = 3500", True),  # precedence
        ("amount > 2000 AND state <> home_state", True),
        ("amount > 3000 AND state <> home_state", False),
        ("amount > 3000 OR state <> home_state", True),
        ("amount > 3000 OR state = home_state", False),
        ("NOT amount > 3000", True),
        ("NOT (amount > 2000 AND state <> home_state)", False),
        ("state IN ('NY', 'NJ')", True),
        ("state IN ('CT')", False),
        ("state NOT IN ('CT', 'NJ')", True),
        ("amount IN (1, 2500.0)", True),
        ("amount IN (1, 'x', 2500)", True),  # mixed families
        ("state IN (home_state, 'NY')", True),  # non-literal elements
        ("amount BETWEEN 2000 AND 2500", True),
        ("amount BETWEEN 2501 AND 3000", False),
        ("amount NOT BETWEEN 0 AND 100", True),
        ("state BETWEEN 'MA' AND 'OH'", True),
        ("amount BETWEEN quantity AND 2500", True),  # non-literal bounds
        ("note IS NULL", True),
        ("note IS NOT NULL", False),
        ("amount IS NOT NULL", True),
        ("flag", True),
        ("off", False),
        ("NOT off", True),
        ("flag = TRUE", True),
        ("flag IS TRUE", True),
        ("off IS FALSE", True),
        ("off IS NOT TRUE", True),
        ("TRUE", True),
        ("FALSE", False),
        ("NULL", False),
        ("LOWER(currency) = 'usd'", True),
        ("UPPER(merchant.name) = 'ACME'", True),
        ("LENGTH(state) = 2", True),
        ("ABS(quantity) = 2", True),
        ("COALESCE(note, amount) = 2500", True),
        ("COALESCE(note, NULL, 'x') = 'x'", True),
        ("merchant.country = 'US'", True),
        ("merchant.geo.lat > 1", True),
        ('"odd name" = 7', True),
        ("tags = tags", True),  # other families compare with = within their type
        ("tags < tags", False),  # ... but are not ordered
        ("state = 'NY' -- a comment", True),
    ],
)
def test_operators(condition: str, expected: bool) -> None:
    assert matches(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # A comparison with NULL is NULL: neither it nor its negation matches.
        ("note = 1", False),
        ("NOT note = 1", False),
        ("note <> 1", False),
        ("NOT note <> 1", False),
        ("note = NULL", False),
        ("NOT note = NULL", False),
        ("note > 1", False),
        ("NOT note > 1", False),
        ("note IN (1, 2)", False),
        ("NOT note IN (1, 2)", False),
        ("amount IN (1, NULL)", False),
        ("amount NOT IN (1, NULL)", False),  # NULL, not TRUE
        ("amount IN (2500, NULL)", True),
        ("note BETWEEN 1 AND 2", False),
        ("note NOT BETWEEN 1 AND 2", False),
        ("note LIKE 'a%'", False),
        ("note NOT LIKE 'a%'", False),
        ("note", False),
        ("NOT note", False),
        # Three-valued AND/OR.
        ("note = 1 OR amount > 0", True),
        ("NOT (note = 1 AND amount < 0)", True),  # NULL AND FALSE is FALSE
        ("NOT (note = 1 AND amount > 0)", False),  # NULL AND TRUE is NULL
        ("NOT (note = 1 OR amount > 0)", False),  # NULL OR TRUE is TRUE
        ("NOT (note = 1 OR amount < 0)", False),  # NULL OR FALSE is NULL
        ("(note = 1) IS NULL", True),
        ("(note = 1 AND amount < 0) IS FALSE", True),
        ("(note = 1 OR amount > 0) IS TRUE", True),
        # Arithmetic with NULL or non-numbers is NULL; division by zero is NULL.
        ("note + 1 IS NULL", True),
        ("amount / 0 IS NULL", True),
        ("amount % 0 IS NULL", True),
        ("NOT amount / 0 > 1", False),
        ("state + 1 IS NULL", True),
        ("flag + 1 IS NULL", True),  # booleans are not numbers
        ("-state IS NULL", True),
        ("LENGTH(amount) IS NULL", True),
        ("ABS(state) IS NULL", True),
        ("LOWER(note) IS NULL", True),
    ],
)
def test_null_semantics(condition: str, expected: bool) -> None:
    assert matches(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("amount = '2500'", False),  # a string never equals a number
        ("amount <> '2500'", True),
        ("NOT amount = '2500'", True),
        ("amount > 'a'", False),  # ordering across families is NULL...
        ("NOT amount > 'a'", False),  # ... so its negation does not match either
        ("flag = 1", False),  # booleans are not numbers
        ("flag <> 1", True),
        ("off < flag", True),  # FALSE < TRUE
        ("flag > 0", False),
        ("state IN (1, 2)", False),
        ("NOT state IN (1, 2)", True),
        ("amount LIKE '25%'", False),  # LIKE applies to strings only
        ("NOT amount LIKE '25%'", False),
        ("amount BETWEEN 'a' AND 'z'", False),
        ("NOT amount BETWEEN 'a' AND 'z'", False),
        ("amount", False),  # a non-boolean field used as a condition counts as NULL
        ("NOT amount", False),
    ],
)
def test_mixed_types(condition: str, expected: bool) -> None:
    assert matches(condition) is expected


# --------------------------------------------------------------------------- LIKE


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("a.c%", "a.cde", True),
        ("a.c%", "abcde", False),  # '.' is not a regex wildcard
        ("a%", "abc", True),
        ("a%", "bac", False),
        ("%c", "abc", True),
        ("%b%", "abc", True),
        ("%b%", "ac", False),
        ("abc", "abc", True),
        ("abc", "abcd", False),  # anchored at both ends
        ("a_c", "abc", True),
        ("a_c", "ac", False),
        ("a_c", "abbc", False),
        ("%", "", True),
        ("", "", True),
        ("", "a", False),
        ("a%%c", "abbc", True),
        ("%a_%", "xxayy", True),
        ("a%", "a\nb", True),  # % spans newlines
        ("(a)[b]*+?$^|\\", "(a)[b]*+?$^|\\", True),  # regex metacharacters are literal
        ("(a)%", "(a)xyz", True),
        ("a+", "aa", False),
        ("A%", "abc", False),  # LIKE is case-sensitive
    ],
)
def test_like(pattern: str, text: str, expected: bool) -> None:
    sql_pattern = pattern.replace("'", "''")
    assert matches(f"name LIKE '{sql_pattern}'", {"name": text}) is expected
    assert matches(f"name NOT LIKE '{sql_pattern}'", {"name": text}) is (not expected)


def test_like_escape_and_ilike() -> None:
    assert matches("name LIKE '50!%' ESCAPE '!'", {"name": "50%"})
    assert not matches("name LIKE '50!%' ESCAPE '!'", {"name": "500"})
    assert matches("name LIKE 'a!_b%' ESCAPE '!'", {"name": "a_bcd"})
    assert not matches("name LIKE 'a!_b%' ESCAPE '!'", {"name": "axbcd"})
    assert matches("name LIKE 'a!!%' ESCAPE '!'", {"name": "a!x"})
    assert matches("name ILIKE 'ac%'", {"name": "ACME"})
    assert matches("name ILIKE 'a_m.'", {"name": "AcM."})
    assert not matches("name ILIKE 'a_m.'", {"name": "AcMe"})
    assert matches("name NOT ILIKE 'x%'", {"name": "ACME"})


# --------------------------------------------------------------------------- fields


def test_missing_field_raises_with_path() -> None:
    condition = compile_condition("amount > 2000 AND merchant.country = 'US'")
    with pytest.raises(MissingFieldError) as raised:
        condition.fn({"merchant": {"country": "US"}})
    assert raised.value.field == "amount"
    with pytest.raises(MissingFieldError) as raised:
        condition.fn({"amount": 2500, "merchant": {"name": "x"}})
    assert raised.value.field == "merchant.country"


@pytest.mark.parametrize("merchant", ["Acme", 5, ["country"], None, True])
def test_nested_access_into_non_object_is_a_missing_field(merchant: object) -> None:
    condition = compile_condition("merchant.country = 'US'")
    with pytest.raises(MissingFieldError) as raised:
        condition.fn({"merchant": merchant})
    assert raised.value.field == "merchant.country"
    # ... but as the operand of IS NULL it is simply NULL.
    assert compile_condition("merchant.country IS NULL").fn({"merchant": merchant})


def test_is_null_treats_missing_as_null() -> None:
    assert matches("missing IS NULL", {})
    assert not matches("missing IS NOT NULL", {})
    assert matches("a.b.c IS NULL", {"a": {}})
    assert matches("(missing) IS NULL", {})
    assert matches("NOT missing IS NOT NULL", {})
    # Only the direct operand: inside an expression a missing field is still an error.
    with pytest.raises(MissingFieldError):
        matches("missing + 1 IS NULL", {})


def test_missing_field_in_skipped_branch_is_not_an_error() -> None:
    assert matches("amount > 0 OR missing = 1", {"amount": 1})
    assert not matches("amount < 0 AND missing = 1", {"amount": 1})
    assert not matches("amount = NULL AND missing = 1", {"amount": 1})  # cannot be TRUE
    with pytest.raises(MissingFieldError):
        matches("amount < 0 OR missing = 1", {"amount": 1})
    with pytest.raises(MissingFieldError):  # under NOT, NULL AND x needs x
        matches("NOT (note = 1 AND missing = 1)", {"note": None})
    with pytest.raises(MissingFieldError):  # arithmetic evaluates both operands
        matches("note + missing IS NULL", {"note": None})


def test_deep_and_quoted_paths() -> None:
    record = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}, "x y": {"z.w": 2}}
    assert matches("a.b.c.d.e.f = 1", record)
    assert matches('"x y" IS NOT NULL', record)
    compiled = compile_condition('a.b.c.d.e.f = 1 AND "x y" IS NOT NULL AND k IS NULL')
    assert compiled.fields == frozenset({"a.b.c.d.e.f", "x y", "k"})


def test_field_names_are_only_ever_subscripts() -> None:
    # Fields named like Python builtins or the generated code's own names are plain keys.
    record = {"r": 1, "exec": 2, "_t0": 3, "_missing": 4, "KeyError": 5, "None": 6}
    condition = 'r = 1 AND exec = 2 AND _t0 = 3 AND _missing = 4 AND "KeyError" = 5'
    assert matches(condition + ' AND "None" = 6', record)
    compiled = compile_condition(condition)
    assert compiled.fn.__globals__["__builtins__"] == {}


def test_field_getter() -> None:
    get = field_getter("merchant.geo.lat")
    assert get(TX) == 1.5
    with pytest.raises(MissingFieldError) as raised:
        get({"merchant": {"geo": "x"}})
    assert raised.value.field == "merchant.geo.lat"
    assert field_getter("note")(TX) is None
    for bad in ["", "a..b", ".a", "a.", "__class__", "a.__dict__", " a"]:
        with pytest.raises(RuleCompileError):
            field_getter(bad)


def test_seed_rule_compiles_to_straight_line_code() -> None:
    compiled = compile_condition("amount > 2000 AND state <> home_state")
    source = compiled.python_source
    assert "(_t0 := r['amount'])" in source and "_t0 > 2000" in source
    assert "_t1 != _t2" in source
    assert "_gt(" not in source  # the numeric comparison is inline, not a helper call
    assert compiled.fields == frozenset({"amount", "state", "home_state"})
    record = {"amount": 2500, "state": "NY", "home_state": "CA"}
    assert compiled.fn(record) is True
    assert compiled.fn({**record, "state": "CA"}) is False
    assert compiled.fn({**record, "amount": 2000}) is False


# --------------------------------------------------------------------------- rejected input


@pytest.mark.parametrize(
    ("condition", "message", "line", "column"),
    [
        ("__import__('os')", "function __import__() is not allowed", 1, 1),
        ("os.system('x')", "function system() is not allowed", 1, 4),
        ("eval('1') = 1", "is not allowed", 1, 1),
        ("amount = 1 AND\n  exec(x) > 2", "function exec() is not allowed", 2, 3),
        ("amount.__class__ = 1", "'__class__' is reserved", 1, 8),
        ('"__class__" = 1', "'__class__' is reserved", 1, 1),
        ("a.__dict__.x IS NULL", "'__dict__' is reserved", 1, 3),
        ("x = (SELECT 1)", "subqueries are not supported", 1, 5),
        ("x IN (SELECT 1)", "not supported", 1, 1),
        ("EXISTS(SELECT 1)", "subqueries are not supported", 1, 1),
        ("SELECT 1", "syntax error", 1, 1),
        ("SELECT * FROM t WHERE x = 1", "syntax error", 1, 1),
        ("amount >", "syntax error near '>'", 1, 8),
        ("amount = 1\n AND state >", "syntax error near '>'", 2, 12),
        ("amount = 1; DROP TABLE t", "syntax error", 1, 13),
        ("state = 'NY", "unterminated quoted string", 1, 9),
        ("CAST(amount AS INT) = 1", "CAST is not supported", 1, 1),
        ("x.* = 1", "not supported", 1, 3),
        ("amount = ?", "not supported", 1, 10),
        ("amount + 1", "is not a condition", 1, 1),
        ("'yes'", "is not a condition", 1, 1),
        ("name LIKE other", "pattern must be a string literal", 1, 11),
        ("name LIKE 'a!' ESCAPE '!'", "ends with its ESCAPE character", 1, 11),
        ("state IN ()", "IN needs at least one value", 1, 1),
        ("x BETWEEN SYMMETRIC 1 AND 2", "'symmetric' is not supported", 1, 1),
        ("a || b = 'x'", "not supported", 1, 1),
        ("x = 0x1F", "syntax error near 'x1F'", 1, 6),
    ],
)
def test_rejected(condition: str, message: str, line: int, column: int) -> None:
    with pytest.raises(RuleCompileError) as raised:
        compile_condition(condition, origin="rules/x.py", rule="r1")
    error = raised.value
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    assert f"(condition line {line}, column {column})" in str(error)
    assert error.file == "rules/x.py" and error.rule == "r1"


def test_rejected_errors_carry_hints() -> None:
    for condition in ["__import__('os')", "SELECT 1", "amount >", "x = (SELECT 1)"]:
        with pytest.raises(RuleCompileError) as raised:
            compile_condition(condition)
        assert raised.value.hint
    with pytest.raises(RuleCompileError) as raised:
        compile_condition("SELECT 1")
    assert "WHERE" in (raised.value.hint or "")


@pytest.mark.parametrize("condition", ["", "   ", "-- only a comment"])
def test_empty_condition(condition: str) -> None:
    with pytest.raises(RuleCompileError):
        compile_condition(condition)


def test_deep_nesting_is_a_compile_error_not_a_crash() -> None:
    with pytest.raises(RuleCompileError):
        compile_condition("(" * 5000 + "x = 1" + ")" * 5000)


# --------------------------------------------------------------------------- reference model


def ref_family(value: Any) -> Any:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return "str" if isinstance(value, str) else type(value)


def is_number(value: Any) -> bool:
    return bool(ref_family(value) == "num")


def ref_compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    same = ref_family(a) == ref_family(b)
    if op in ("=", "<>"):
        equal = bool(same and a == b)
        return equal if op == "=" else not equal
    if not same or ref_family(a) not in ("num", "str", "bool"):
        return None
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def ref_and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def ref_or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def ref_not(a: bool | None) -> bool | None:
    return None if a is None else not a


def ref_like(pattern: str, text: str) -> bool:
    @cache
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(text)
        if pattern[i] == "%":
            return match(i + 1, j) or (j < len(text) and match(i, j + 1))
        if j < len(text) and pattern[i] in ("_", text[j]):
            return match(i + 1, j + 1)
        return False

    return match(0, 0)


def ref_arith(op: str, a: Any, b: Any) -> Any:
    if not (is_number(a) and is_number(b)):
        return None
    if op in "/%" and b == 0:
        return None
    if op == "%":
        return math.fmod(a, b)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def ref_eval(expr: tuple[Any, ...], record: dict[str, Any]) -> Any:
    """Evaluate an expression tree with the documented semantics (values or True/False/None)."""
    kind = expr[0]
    if kind == "field":
        value: Any = record
        for segment in expr[1].split("."):
            value = value[segment]
        return value
    if kind == "lit":
        return expr[1]
    if kind == "neg":
        value = ref_eval(expr[1], record)
        return -value if is_number(value) else None
    if kind == "arith":
        return ref_arith(expr[1], ref_eval(expr[2], record), ref_eval(expr[3], record))
    if kind == "func":
        args = [ref_eval(arg, record) for arg in expr[2]]
        if expr[1] == "COALESCE":
            return next((arg for arg in args if arg is not None), None)
        if expr[1] == "ABS":
            return abs(args[0]) if is_number(args[0]) else None
        if not isinstance(args[0], str):
            return None
        return {"LOWER": str.lower, "UPPER": str.upper, "LENGTH": len}[expr[1]](args[0])
    if kind == "cmp":
        return ref_compare(expr[1], ref_eval(expr[2], record), ref_eval(expr[3], record))
    if kind in ("and", "or"):
        left, right = ref_bool(expr[1], record), ref_bool(expr[2], record)
        return ref_and(left, right) if kind == "and" else ref_or(left, right)
    if kind == "not":
        return ref_not(ref_bool(expr[1], record))
    if kind == "in":
        value = ref_eval(expr[1], record)
        result: bool | None = False
        for option in expr[2]:
            result = ref_or(result, ref_compare("=", value, ref_eval(option, record)))
        return ref_not(result) if expr[3] else result
    if kind == "between":
        value = ref_eval(expr[1], record)
        low, high = ref_eval(expr[2], record), ref_eval(expr[3], record)
        result = ref_and(ref_compare(">=", value, low), ref_compare("<=", value, high))
        return ref_not(result) if expr[4] else result
    if kind == "isnull":
        operand = expr[1]
        value = ref_bool(operand, record) if operand[0] in BOOL_KINDS else ref_eval(operand, record)
        return (value is None) != expr[2]
    if kind == "istruth":
        return (ref_bool(expr[1], record) is expr[2]) != expr[3]
    if kind == "like":
        value = ref_eval(expr[1], record)
        if not isinstance(value, str):
            return None
        pattern, text = (expr[2].lower(), value.lower()) if expr[4] else (expr[2], value)
        return ref_like(pattern, text) != expr[3]
    raise AssertionError(kind)


def ref_bool(expr: tuple[Any, ...], record: dict[str, Any]) -> bool | None:
    value = ref_eval(expr, record)
    return value if isinstance(value, bool) else None  # a bare non-boolean field is NULL


BOOL_KINDS = {"cmp", "and", "or", "not", "in", "between", "isnull", "istruth", "like", "lit_bool"}


def sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def to_sql(expr: tuple[Any, ...]) -> str:
    kind = expr[0]
    if kind == "field":
        return str(expr[1])
    if kind == "lit":
        return sql_literal(expr[1])
    if kind == "neg":
        return f"-({to_sql(expr[1])})"
    if kind in ("arith", "cmp"):
        return f"({to_sql(expr[2])} {expr[1]} {to_sql(expr[3])})"
    if kind == "func":
        return f"{expr[1]}({', '.join(to_sql(arg) for arg in expr[2])})"
    if kind in ("and", "or"):
        return f"({to_sql(expr[1])} {kind.upper()} {to_sql(expr[2])})"
    if kind == "not":
        return f"(NOT {to_sql(expr[1])})"
    if kind == "in":
        options = ", ".join(to_sql(option) for option in expr[2])
        return f"({to_sql(expr[1])} {'NOT ' if expr[3] else ''}IN ({options}))"
    if kind == "between":
        between = f"{'NOT ' if expr[4] else ''}BETWEEN {to_sql(expr[2])} AND {to_sql(expr[3])}"
        return f"({to_sql(expr[1])} {between})"
    if kind == "isnull":
        return f"({to_sql(expr[1])} IS {'NOT ' if expr[2] else ''}NULL)"
    if kind == "istruth":
        truth = "TRUE" if expr[2] else "FALSE"
        return f"({to_sql(expr[1])} IS {'NOT ' if expr[3] else ''}{truth})"
    if kind == "like":
        operator = ("NOT " if expr[3] else "") + ("ILIKE" if expr[4] else "LIKE")
        return f"({to_sql(expr[1])} {operator} {sql_literal(expr[2])})"
    raise AssertionError(kind)


FIELD_NAMES = ["a", "b", "c", "n.x"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-2.5, 0.0, 0.5, 2.0]),
    st.sampled_from(["", "a", "ab", "A", "b%", "a_b", "it's"]),
)
VALUES = st.one_of(SCALARS, st.just([1]), st.just({"k": 1}))
RECORDS = st.fixed_dictionaries(
    {"a": VALUES, "b": VALUES, "c": VALUES, "n": st.fixed_dictionaries({"x": VALUES})}
)
FIELDS = st.sampled_from(FIELD_NAMES).map(lambda name: ("field", name))
LITERALS = SCALARS.map(lambda value: ("lit", value))
LEAVES = st.one_of(FIELDS, LITERALS)


def _values(inner: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.just("neg"), inner),
        st.tuples(st.just("arith"), st.sampled_from(["+", "-", "*", "/", "%"]), inner, inner),
        st.tuples(
            st.just("func"),
            st.sampled_from(["LOWER", "UPPER", "LENGTH", "ABS"]),
            st.tuples(inner),
        ),
        st.tuples(st.just("func"), st.just("COALESCE"), st.tuples(inner, inner)),
    )


VALUE_EXPRS = st.recursive(LEAVES, _values, max_leaves=4)
COMPARE_OPS = st.sampled_from(["=", "<>", "<", "<=", ">", ">="])
PATTERNS = st.text(alphabet="ab%_.A", max_size=4)
BOOL_LEAVES = st.one_of(
    FIELDS,  # a bare field used as a condition
    st.booleans().map(lambda value: ("lit", value)),
    st.tuples(st.just("cmp"), COMPARE_OPS, VALUE_EXPRS, VALUE_EXPRS),
    st.tuples(st.just("in"), VALUE_EXPRS, st.lists(LEAVES, min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("between"), VALUE_EXPRS, LEAVES, LEAVES, st.booleans()),
    st.tuples(st.just("isnull"), VALUE_EXPRS, st.booleans()),
    st.tuples(st.just("like"), VALUE_EXPRS, PATTERNS, st.booleans(), st.booleans()),
)


def _conditions(inner: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.sampled_from(["and", "or"]), inner, inner),
        st.tuples(st.just("not"), inner),
        st.tuples(st.just("istruth"), inner, st.booleans(), st.booleans()),
        st.tuples(st.just("isnull"), inner, st.booleans()),
        st.tuples(st.just("cmp"), COMPARE_OPS, inner, inner),  # comparing truth values
    )


CONDITIONS = st.recursive(BOOL_LEAVES, _conditions, max_leaves=6)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=CONDITIONS, records=st.lists(RECORDS, min_size=1, max_size=6))
def test_compiled_matches_reference(expr: tuple[Any, ...], records: list[dict[str, Any]]) -> None:
    text = to_sql(expr)
    compiled = compile_condition(text)
    for record in records:
        assert compiled.fn(record) is (ref_bool(expr, record) is True), (text, record)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    expr=CONDITIONS,
    record=RECORDS,
    drop=st.sets(st.sampled_from(["a", "b", "c", "n", "n.x", "n=5"])),
)
def test_missing_fields_raise_or_do_not_matter(
    expr: tuple[Any, ...], record: dict[str, Any], drop: set[str]
) -> None:
    """A missing field either raises MissingFieldError naming it, or the result is as if the
    field were NULL (it was not needed, or it was the operand of IS NULL)."""
    sparse = {key: value for key, value in record.items() if key not in drop}
    if "n" in sparse:
        sparse["n"] = 5 if "n=5" in drop else {} if "n.x" in drop else sparse["n"]
    values = {path: lookup(sparse, path) for path in FIELD_NAMES}
    filled = {"a": values["a"], "b": values["b"], "c": values["c"], "n": {"x": values["n.x"]}}
    compiled = compile_condition(to_sql(expr))
    try:
        result = compiled.fn(sparse)
    except MissingFieldError as error:
        assert error.field in compiled.fields
        assert lookup(sparse, error.field) is MISSING
        return
    resolved = {key: None if value is MISSING else value for key, value in filled.items()}
    resolved["n"] = {"x": None if values["n.x"] is MISSING else values["n.x"]}
    assert result is (ref_bool(expr, resolved) is True)


MISSING = object()


def lookup(record: Any, path: str) -> Any:
    for segment in path.split("."):
        if not isinstance(record, dict) or segment not in record:
            return MISSING
        record = record[segment]
    return record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    exprs=st.lists(CONDITIONS, min_size=1, max_size=5),
    records=st.lists(RECORDS, min_size=1, max_size=4),
    drop=st.sets(st.sampled_from(["a", "b", "c", "n"])),
)
def test_fused_conditions_equal_each_condition(
    exprs: list[tuple[Any, ...]], records: list[dict[str, Any]], drop: set[str]
) -> None:
    """The fused function gives the indices of the TRUE conditions, in order; it raises exactly
    when one of the conditions raises (the processor then calls them one by one). Conditions
    are fused with their constants and temporaries renamed apart, so equal names do not mix."""
    compiled = [compile_condition(to_sql(expr)) for expr in exprs]
    fused = fuse_conditions(compiled)
    for full in records:
        record = {key: value for key, value in full.items() if key not in drop}
        outcomes: list[bool | None] = []
        for condition in compiled:
            try:
                outcomes.append(condition.fn(record))
            except MissingFieldError:
                outcomes.append(None)
        if None in outcomes:  # the fused function does not say why: a raw lookup error
            with pytest.raises((KeyError, TypeError)):
                fused(record)
        else:
            assert fused(record) == tuple(i for i, hit in enumerate(outcomes) if hit)


def test_fused_conditions_keep_each_conditions_constants() -> None:
    conditions = [
        compile_condition("merchant IN ('A', 'B') AND amount > 10"),
        compile_condition("merchant IN ('C') AND amount > 20"),
        compile_condition("merchant LIKE 'C%'"),
    ]
    fused = fuse_conditions(conditions)
    assert fused({"merchant": "A", "amount": 11}) == (0,)
    assert fused({"merchant": "C", "amount": 21}) == (1, 2)
    assert fused({"merchant": "B", "amount": 5}) == ()


class _CountingReads(dict[str, Any]):
    """A record that counts how often each field is read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: dict[str, int] = {}

    def __getitem__(self, key: str) -> Any:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().__getitem__(key)


def test_fused_conditions_read_a_field_every_condition_needs_once() -> None:
    """A top-level field that some condition reads whenever it runs (its first operand) is read
    and class-checked once for all; a field read only behind a short-circuit is read where it
    is, so a record without it still runs the fused function."""
    fused = fuse_conditions(
        [
            compile_condition("amount > 2000 AND state <> home_state"),
            compile_condition("amount >= 9000"),
            compile_condition("merchant = 'FuelMax' AND amount > 150 AND rare > 1"),
            compile_condition("merchant LIKE '% Online %' AND amount > 1000"),
        ]
    )
    record = _CountingReads(amount=2500.0, state="CA", home_state="NY", merchant="FuelMax", rare=2)
    assert fused(record) == (0, 2)
    assert record.reads == {"amount": 1, "merchant": 1, "state": 1, "home_state": 1, "rare": 1}
    # "rare" is read only when merchant is FuelMax and the amount over 150: not shared
    sparse = _CountingReads(amount=50.0, state="CA", home_state="CA", merchant="Bistro 21")
    assert fused(sparse) == ()
    assert "rare" not in sparse.reads
    with pytest.raises(KeyError):
        fused({"state": "CA", "home_state": "CA", "merchant": "x"})  # amount: every call reads it
