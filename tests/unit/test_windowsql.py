"""Window rules in SQL: the grammar, HAVING over aggregates, located errors, the declaration API."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import streamproc
from streamproc.errors import MissingFieldError, RuleCompileError
from streamproc.ruleset import RuleSet, load_rules, rule, window_rule
from streamproc.windowspec import Aggregate, Hop, Session, Sliding, Tumble, WindowRule
from streamproc.windowsql import compile_window_sql

REPO = Path(__file__).resolve().parents[2]
HOUR = "TUMBLE(event_time, INTERVAL '1' HOUR)"


def compile_sql(sql: str, **options: Any) -> WindowRule:
    return compile_window_sql(sql, name=options.pop("name", "w"), version=1, **options)


def error_of(sql: str, **options: Any) -> RuleCompileError:
    with pytest.raises(RuleCompileError) as raised:
        compile_sql(sql, **options)
    assert raised.value.hint, raised.value
    return raised.value


def column(sql: str, token: str, occurrence: int = 0) -> int:
    """1-based column of the n-th occurrence of ``token`` in a one-line SQL text."""
    position = -1
    for _ in range(occurrence + 1):
        position = sql.index(token, position + 1)
    return position + 1


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- window kinds


def test_tumble() -> None:
    compiled = compile_sql(
        "SELECT card_id, SUM(amount) AS total, COUNT(*) FROM transactions "
        f"GROUP BY card_id, {HOUR}",
        origin="rules/x.py:3",
    )
    assert compiled.window == Tumble(3_600_000)
    assert compiled.group_by == ("card_id",)
    assert compiled.aggregates == (
        Aggregate("sum", "amount", "SUM(amount)", "total"),
        Aggregate("count", None, "COUNT(*)", "COUNT(*)"),
    )
    assert compiled.select == ("card_id", "total", "COUNT(*)")
    assert compiled.time_field == "event_time"
    assert compiled.having is None and compiled.where is None
    assert compiled.origin == "rules/x.py:3" and compiled.sql.startswith("SELECT card_id")


def test_hop_with_several_group_fields_and_every_aggregate() -> None:
    compiled = compile_sql(
        """
        select store_id, product_id, count(quantity), count(distinct merchant.name) as merchants,
               avg(amount), min(amount) lo, max(amount) AS hi
        from sales
        group by store_id, product_id, hop(ts, interval '1' minute, interval '10' minutes)
        """
    )
    assert compiled.window == Hop(slide_ms=60_000, size_ms=600_000)
    assert compiled.group_by == ("store_id", "product_id")
    assert compiled.time_field == "ts"
    assert [(a.function, a.field, a.name, a.alias) for a in compiled.aggregates] == [
        ("count", "quantity", "COUNT(quantity)", "COUNT(quantity)"),
        ("count_distinct", "merchant.name", "COUNT(DISTINCT merchant.name)", "merchants"),
        ("avg", "amount", "AVG(amount)", "AVG(amount)"),
        ("min", "amount", "MIN(amount)", "lo"),
        ("max", "amount", "MAX(amount)", "hi"),
    ]
    assert compiled.select == (
        "store_id",
        "product_id",
        "COUNT(quantity)",
        "merchants",
        "AVG(amount)",
        "lo",
        "hi",
    )


def test_session_on_arrival_time() -> None:
    compiled = compile_sql(
        "SELECT COUNT(*) AS n, card_id FROM t "
        "GROUP BY card_id, SESSION(ARRIVAL_TIME, INTERVAL '30' MINUTE)"
    )
    assert compiled.window == Session(gap_ms=1_800_000)
    assert compiled.time_field is None
    assert compiled.select == ("n", "card_id")
    # Quoted, or in another case, the name is a record field like any other.
    quoted = compile_sql('SELECT COUNT(*) FROM t GROUP BY SESSION("ARRIVAL_TIME", INTERVAL 1 DAY)')
    assert (quoted.time_field, quoted.window) == ("ARRIVAL_TIME", Session(86_400_000))


def test_sliding_on_a_nested_time_field_and_global_window() -> None:
    compiled = compile_sql("SELECT COUNT(*) FROM t GROUP BY SLIDING(meta.ts, INTERVAL 5 SECONDS)")
    assert compiled.window == Sliding(range_ms=5_000)
    assert compiled.time_field == "meta.ts"
    assert compiled.group_by == ()


def test_time_field_left_out_uses_the_default() -> None:
    sql = "SELECT COUNT(*) FROM t GROUP BY TUMBLE(INTERVAL '10 minutes')"
    assert compile_sql(sql).time_field == "event_time"
    assert compile_sql(sql, time_field_default="ts").time_field == "ts"
    assert compile_sql(sql, time_field_default=None).time_field is None
    assert compile_sql(sql).window == Tumble(600_000)


@pytest.mark.parametrize(
    ("interval", "ms"),
    [
        ("INTERVAL '250' MILLISECOND", 250),
        ("INTERVAL '90' SECOND", 90_000),
        ("INTERVAL 2 MINUTES", 120_000),
        ("INTERVAL '3 hours'", 10_800_000),
        ("interval '1' day", 86_400_000),
    ],
)
def test_interval_forms(interval: str, ms: int) -> None:
    compiled = compile_sql(f"SELECT COUNT(*) FROM t GROUP BY TUMBLE(ts, {interval})")
    assert compiled.window == Tumble(ms)


SLIDING_SQL = (
    "SELECT card_id, COUNT(*) AS n FROM transactions "
    "GROUP BY card_id, SLIDING(event_time, INTERVAL '10' MINUTE) HAVING n > 5"
)


@pytest.mark.parametrize(
    "frame",
    [
        "RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND CURRENT ROW",
        "RANGE INTERVAL '10' MINUTE PRECEDING",
    ],
)
def test_over_form_is_sliding(frame: str) -> None:
    over = compile_sql(
        f"SELECT card_id, COUNT(*) OVER (PARTITION BY card_id ORDER BY event_time {frame}) AS n "
        "FROM transactions QUALIFY n > 5"
    )
    sliding = compile_sql(SLIDING_SQL)
    for attribute in ("window", "group_by", "aggregates", "select", "time_field"):
        assert getattr(over, attribute) == getattr(sliding, attribute), attribute
    assert over.window == Sliding(600_000)
    assert over.having is not None and sliding.having is not None
    for n in (5, 6):
        values = {"COUNT(*)": n, "n": n, "card_id": "c"}
        assert over.having(values) is sliding.having(values) is (n > 5)


def test_over_form_with_several_aggregates_and_default_time() -> None:
    window = "OVER (PARTITION BY card_id RANGE INTERVAL '1' HOUR PRECEDING)"
    compiled = compile_sql(
        f"SELECT card_id, SUM(amount) {window} AS total, COUNT(*) {window} FROM t "
        f"WHERE amount > 0 QUALIFY total > 100 AND COUNT(*) {window} >= 2",
        time_field_default="ts",
    )
    assert compiled.time_field == "ts"
    assert compiled.window == Sliding(3_600_000)
    assert compiled.select == ("card_id", "total", "COUNT(*)")
    assert compiled.having is not None and compiled.where is not None
    assert compiled.having({"total": 101, "SUM(amount)": 101, "COUNT(*)": 2, "card_id": "c"})
    assert not compiled.having({"total": 101, "SUM(amount)": 101, "COUNT(*)": 1, "card_id": "c"})


def test_options_are_kept() -> None:
    compiled = compile_sql(
        f"SELECT COUNT(*) FROM t GROUP BY {HOUR}",
        name="spend",
        emit="early",
        allowed_lateness_ms=60_000,
        late="correction",
        severity="HIGH",
        sinks=["sqs", "sns"],
        description="about",
    )
    assert (compiled.name, compiled.version, compiled.emit) == ("spend", 1, "early")
    assert (compiled.allowed_lateness_ms, compiled.late) == (60_000, "correction")
    assert (compiled.severity, compiled.sinks, compiled.description) == (
        "HIGH",
        ("sqs", "sns"),
        "about",
    )


# --------------------------------------------------------------------------- WHERE and HAVING


def test_where_filters_records_with_condition_semantics() -> None:
    compiled = compile_sql(
        "SELECT card_id, COUNT(*) FROM t\n"
        "WHERE amount > 100 AND state <> home_state\n"
        f"GROUP BY card_id, {HOUR}"
    )
    assert compiled.where is not None
    assert compiled.where({"amount": 101, "state": "NY", "home_state": "CA"}) is True
    assert compiled.where({"amount": 100, "state": "NY", "home_state": "CA"}) is False
    assert compiled.where({"amount": "101", "state": "NY", "home_state": "CA"}) is False
    with pytest.raises(MissingFieldError):
        compiled.where({"amount": 101})


def test_having_on_canonical_names_aliases_and_hidden_aggregates() -> None:
    compiled = compile_sql(
        "SELECT card_id, COUNT(*) AS n, SUM(amount) AS total FROM t "
        f"GROUP BY card_id, {HOUR} "
        "HAVING count( * ) > 5 AND total >= 100 AND AVG(amount) < 50 "
        "AND COUNT(DISTINCT merchant) >= 2 AND card_id <> 'test'"
    )
    assert compiled.select == ("card_id", "n", "total")
    hidden = compiled.aggregates[2:]
    assert hidden == (
        Aggregate("avg", "amount", "AVG(amount)", "AVG(amount)"),
        Aggregate(
            "count_distinct", "merchant", "COUNT(DISTINCT merchant)", "COUNT(DISTINCT merchant)"
        ),
    )
    values = {
        "card_id": "c-1",
        "COUNT(*)": 6,
        "n": 6,
        "SUM(amount)": 240,
        "total": 240,
        "AVG(amount)": 40,
        "COUNT(DISTINCT merchant)": 2,
    }
    assert compiled.having is not None
    assert compiled.having(values) is True
    assert compiled.having({**values, "COUNT(*)": 5}) is False
    assert compiled.having({**values, "total": 99}) is False
    assert compiled.having({**values, "AVG(amount)": None}) is False  # AVG over nothing is NULL
    assert compiled.having({**values, "COUNT(DISTINCT merchant)": 1}) is False
    assert compiled.having({**values, "card_id": "test"}) is False
    with pytest.raises(MissingFieldError):
        compiled.having({"COUNT(*)": 6})


def test_having_reads_dotted_names_as_one_key() -> None:
    compiled = compile_sql(
        "SELECT merchant.country, MAX(tx.amount) FROM t "
        f"GROUP BY merchant.country, {HOUR} "
        "HAVING merchant.country = 'US' AND MAX(tx.amount) > 3 AND SUM(tx.amount) > 10"
    )
    values = {"merchant.country": "US", "MAX(tx.amount)": 4, "SUM(tx.amount)": 11}
    assert compiled.having is not None
    assert compiled.having(values) is True
    assert compiled.having({**values, "merchant.country": "CA"}) is False
    assert compiled.having({**values, "MAX(tx.amount)": 3}) is False
    with pytest.raises(MissingFieldError, match="SUM"):
        compiled.having({"merchant.country": "US", "MAX(tx.amount)": 4})


# --------------------------------------------------------------------------- located errors

ERRORS = [
    # (sql, offending token, occurrence, message part)
    (
        f"SELECT card_id, COUNT(*) FROM t WHERE COUNT(*) > 1 GROUP BY card_id, {HOUR}",
        "COUNT",
        1,
        "aggregate COUNT(*) is not allowed in WHERE",
    ),
    ("SELECT card_id, COUNT(*) FROM t GROUP BY card_id", "GROUP BY", 0, "GROUP BY has no window"),
    ("SELECT COUNT(*) FROM t", "COUNT", 0, "needs a window"),
    (
        f"SELECT COUNT(*) FROM t GROUP BY {HOUR}, SLIDING(ts, INTERVAL 1 MINUTE)",
        "SLIDING",
        0,
        "more than one window",
    ),
    (
        f"SELECT card_id, TUMBLE(ts, INTERVAL 1 HOUR) FROM t GROUP BY {HOUR}",
        "TUMBLE",
        0,
        "belongs in GROUP BY",
    ),
    (f"SELECT card_id, COUNT(*) FROM t GROUP BY {HOUR}", "card_id", 0, "neither in GROUP BY"),
    (f"SELECT FOO(amount) FROM t GROUP BY {HOUR}", "FOO", 0, "unknown function FOO()"),
    (f"SELECT MEDIAN(amount) FROM t GROUP BY {HOUR}", "MEDIAN", 0, "aggregate MEDIAN()"),
    (
        f"SELECT COUNT(*) + 1 FROM t GROUP BY {HOUR}",
        "COUNT",
        0,
        "SELECT lists fields and aggregates",
    ),
    (f"SELECT * FROM t GROUP BY {HOUR}", "*", 0, "SELECT * is not supported"),
    (f"SELECT t.* FROM t GROUP BY {HOUR}", "t.*", 0, "SELECT * is not supported"),
    (
        f"SELECT COUNT(*) FROM t JOIN u ON t.a = u.a GROUP BY {HOUR}",
        "JOIN",
        0,
        "JOIN is not supported",
    ),
    (f"SELECT COUNT(*) FROM t, u GROUP BY {HOUR}", ",", 0, "JOIN is not supported"),
    (f"SELECT COUNT(*) FROM (SELECT * FROM t) GROUP BY {HOUR}", "(", 1, "subqueries"),
    (
        f"SELECT COUNT(*) FROM t WHERE a IN (SELECT a FROM u) GROUP BY {HOUR}",
        "(",
        1,
        "subqueries",
    ),
    (f"SELECT COUNT(*) FROM t GROUP BY {HOUR} ORDER BY 1", "ORDER", 0, "ORDER BY"),
    (f"SELECT COUNT(*) FROM t GROUP BY {HOUR} LIMIT 5", "LIMIT", 0, "LIMIT"),
    (f"SELECT DISTINCT COUNT(*) FROM t GROUP BY {HOUR}", "DISTINCT", 0, "DISTINCT"),
    (
        "SELECT COUNT(*) FROM t GROUP BY TUMBLE(ts, INTERVAL 'abc' MINUTE)",
        "INTERVAL",
        0,
        "does not parse",
    ),
    (
        "SELECT COUNT(*) FROM t GROUP BY TUMBLE(ts, INTERVAL '1' FORTNIGHT)",
        "INTERVAL",
        0,
        "does not parse",
    ),
    (
        "SELECT COUNT(*) FROM t GROUP BY TUMBLE(ts, INTERVAL '1.5' HOUR)",
        "INTERVAL",
        0,
        "does not parse",
    ),
    ("SELECT COUNT(*) FROM t GROUP BY TUMBLE(ts, 3600)", "3600", 0, "must be an INTERVAL"),
    ("SELECT COUNT(*) FROM t GROUP BY TUMBLE(ts)", "TUMBLE", 0, "TUMBLE takes TUMBLE(ts, size)"),
    (
        "SELECT COUNT(*) FROM t GROUP BY HOP(ts, INTERVAL 3 MINUTE, INTERVAL 10 MINUTE)",
        "INTERVAL",
        1,
        "not a multiple of the slide",
    ),
    (
        "SELECT COUNT(*) FROM t GROUP BY HOP(ts, INTERVAL 10 MINUTE, INTERVAL 1 MINUTE)",
        "INTERVAL",
        1,
        "not a multiple of the slide",
    ),
    ("SELECT COUNT(*) FROM t GROUP BY SESSION(ts, INTERVAL '0' MINUTE)", "INTERVAL", 0, "positive"),
    (
        "SELECT COUNT(*) FROM t GROUP BY SLIDING(ts, INTERVAL '-5' MINUTE)",
        "INTERVAL",
        0,
        "positive",
    ),
    (f"SELECT SUM('abc') FROM t GROUP BY {HOUR}", "'abc'", 0, "must be a field path"),
    (f"SELECT SUM(card_id = 1) FROM t GROUP BY {HOUR}", "card_id", 0, "must be a field path"),
    (f"SELECT SUM(*) FROM t GROUP BY {HOUR}", "*", 0, "argument of SUM must be a field path"),
    (f"SELECT SUM(DISTINCT x) FROM t GROUP BY {HOUR}", "DISTINCT", 0, "must be a field path"),
    (f"SELECT COUNT(a, b) FROM t GROUP BY {HOUR}", "COUNT", 0, "exactly one argument"),
    (f"SELECT SUM(a.__class__) FROM t GROUP BY {HOUR}", "__class__", 0, "reserved"),
    (f"SELECT COUNT(*) FROM t GROUP BY __x, {HOUR}", "__x", 0, "reserved"),
    ("SELECT COUNT(*) FROM t GROUP BY TUMBLE(__ts, INTERVAL 1 HOUR)", "__ts", 0, "reserved"),
    (f"SELECT COUNT(*) FROM t GROUP BY card_id, card_id, {HOUR}", "card_id", 1, "listed twice"),
    (f"SELECT COUNT(*), COUNT(*) FROM t GROUP BY {HOUR}", "COUNT", 1, "selected twice"),
    (f"SELECT card_id, COUNT(*) AS card_id FROM t GROUP BY card_id, {HOUR}", "card_id", 1, "alias"),
    (f"SELECT card_id AS c FROM t GROUP BY card_id, {HOUR}", " c ", 0, "only aggregates"),
    (f"SELECT COUNT(*) AS n FROM t GROUP BY {HOUR} HAVING m > 1", "m >", 0, "not an alias"),
    (f"SELECT COUNT(*) FROM t GROUP BY {HOUR} HAVING COUNT(*) > 1 AND foo(2)", "foo", 0, "foo()"),
    (f"SELECT COUNT(*) FROM t GROUP BY {HOUR} QUALIFY COUNT(*) > 1", "QUALIFY", 0, "QUALIFY"),
    (
        "SELECT COUNT(*) OVER (ORDER BY ts RANGE INTERVAL 1 MINUTE PRECEDING) AS n "
        "FROM t HAVING n > 1",
        "HAVING",
        0,
        "HAVING goes with GROUP BY",
    ),
    (
        "SELECT COUNT(*) OVER (ORDER BY ts ROWS BETWEEN 5 PRECEDING AND CURRENT ROW) FROM t",
        "ROWS",
        0,
        "RANGE ... PRECEDING",
    ),
    (
        "SELECT COUNT(*) OVER (ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) "
        "FROM t",
        "RANGE",
        0,
        "RANGE ... PRECEDING",
    ),
    (
        "SELECT COUNT(*) OVER (ORDER BY ts RANGE INTERVAL '0 minutes' PRECEDING) FROM t",
        "INTERVAL",
        0,
        "the RANGE must be positive",
    ),
    (
        "SELECT COUNT(*) OVER (ORDER BY ts DESC RANGE INTERVAL 1 MINUTE PRECEDING) FROM t",
        "ORDER",
        0,
        "ascending",
    ),
    (
        "SELECT COUNT(*) OVER (ORDER BY ts RANGE INTERVAL 1 MINUTE PRECEDING), "
        "SUM(x) OVER (ORDER BY ts RANGE INTERVAL 2 MINUTE PRECEDING) FROM t",
        "SUM",
        0,
        "same OVER",
    ),
    (
        "SELECT COUNT(*) OVER (ORDER BY ts RANGE INTERVAL 1 MINUTE PRECEDING), SUM(x) FROM t",
        "SUM",
        0,
        "needs the OVER",
    ),
    (
        "SELECT a, COUNT(*) OVER (PARTITION BY b RANGE INTERVAL 1 MINUTE PRECEDING) FROM t",
        "a,",
        0,
        "neither in PARTITION BY",
    ),
    (f"SELECT COUNT(*) FROM t GROUP BY {HOUR} HAVING", "HAVING", 0, "syntax error"),
    (f"SELECT COUNT(*) FROM t GROUP BY {HOUR}; SELECT 1", "SELECT", 1, "exactly one SELECT"),
]


@pytest.mark.parametrize(("sql", "token", "occurrence", "message"), ERRORS)
def test_errors_point_at_the_offending_token(
    sql: str, token: str, occurrence: int, message: str
) -> None:
    error = error_of(sql, rule="w")
    assert message in error.message
    expected = column(sql, token, occurrence) + (1 if token.startswith(" ") else 0)
    assert (error.line, error.column) == (1, expected), error.message
    assert f"(SQL line 1, column {expected})" in error.message
    assert error.rule == "w"


def test_exact_columns_on_a_later_line() -> None:
    sql = (
        "SELECT card_id, COUNT(*)\nFROM transactions\nWHERE SUM(amount) > 1\nGROUP BY card_id, "
        + HOUR
    )
    error = error_of(sql, origin="rules/x.py")
    assert (error.file, error.line, error.column) == ("rules/x.py", 3, 7)
    assert "(SQL line 3, column 7)" in error.message
    # A HAVING error after a replaced aggregate is mapped back to the SQL text.
    sql = f"SELECT COUNT(*) FROM t GROUP BY {HOUR}\nHAVING SUM(amount) > 1 AND SUM(amount) LIKE 5"
    error = error_of(sql)
    assert (error.line, error.column) == (2, sql.splitlines()[1].index("5") + 1)  # the pattern
    assert "LIKE pattern" in error.message
    sql = f"SELECT COUNT(*) FROM t GROUP BY {HOUR}\nHAVING COUNT(DISTINCT a.b) > 1 AND nope > 1"
    assert (error_of(sql).line, error_of(sql).column) == (2, 36)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Bad Name"}, "invalid rule name"),
        ({"version": 0}, "version must be an integer"),
        ({"emit": "sometimes"}, "unknown emit 'sometimes'"),
        ({"late": "drop"}, "unknown late 'drop'"),
        ({"severity": "SEVERE"}, "unknown severity"),
        ({"allowed_lateness_ms": -1}, "allowed lateness"),
        ({"sinks": "sqs"}, "sinks must be a list"),
        ({"time_field_default": "a.__b"}, "reserved"),
    ],
)
def test_invalid_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleCompileError, match=message) as raised:
        compile_window_sql(
            f"SELECT COUNT(*) FROM t GROUP BY {HOUR}",
            name=options.pop("name", "w"),
            version=options.pop("version", 1),
            origin="rules/x.py:7",
            **options,
        )
    assert raised.value.line is None


# --------------------------------------------------------------------------- declaration API


def test_window_rule_declaration_and_ruleset(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "spend.py",
        """
        from datetime import timedelta

        from streamproc import rule, window_rule

        big = rule(name="big", condition="amount > 1000")
        spend = window_rule(
            name="spend",
            sql="SELECT card_id, SUM(amount) AS total FROM tx "
            "GROUP BY card_id, TUMBLE(event_time, INTERVAL '1' HOUR) HAVING total > 10",
            allowed_lateness=timedelta(seconds=30),
            late="correction",
            severity="LOW",
        )
        again = spend
        """,
    )
    rules = load_rules([tmp_path])
    assert len(rules) == 2 and [r.name for r in rules] == ["big"]
    spend = rules.window_by_name("spend")
    assert rules.window_rules == (spend,)
    assert spend.origin == f"{path}:6"
    assert (spend.allowed_lateness_ms, spend.late, spend.severity) == (30_000, "correction", "LOW")
    assert rules.fields is None  # a window rule's WHERE fields are not recorded
    with pytest.raises(KeyError, match="no window rule named 'big'"):
        rules.window_by_name("big")
    with pytest.raises(KeyError, match="no rule named 'spend'"):
        rules.by_name("spend")
    assert streamproc.window_rule is window_rule


def test_duplicate_names_across_rule_kinds() -> None:
    condition = rule(name="dup", condition="a = 1")
    window = window_rule(name="dup", sql=f"SELECT COUNT(*) FROM t GROUP BY {HOUR}")
    with pytest.raises(RuleCompileError, match="duplicate rule name 'dup'"):
        RuleSet((condition,), (window,))
    assert len(RuleSet((condition,))) == 1


def test_sql_error_is_located_in_the_rule_module(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.py",
        '''
        from streamproc import window_rule

        bad = window_rule(
            name="bad",
            sql="""
                SELECT card_id, COUNT(*)
                FROM transactions
                WHERE SUM(amount) > 10
                GROUP BY card_id, TUMBLE(event_time, INTERVAL '1' HOUR)
            """,
        )
        ''',
    )
    with pytest.raises(RuleCompileError) as raised:
        load_rules([path])
    error = raised.value
    lines = path.read_text().splitlines()
    assert (error.file, error.line) == (str(path), 8)
    assert error.column == lines[7].index("SUM") + 1
    assert error.rule == "bad" and "not allowed in WHERE" in error.message and error.hint
    sql_line = textwrap.dedent(lines[7])  # the SQL starts with a newline: its 4th line
    assert f"(SQL line 4, column {lines[7].index('SUM') + 1})" in error.message, sql_line


def test_sql_error_on_the_first_line_of_a_one_line_literal(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.py",
        """
        from streamproc import window_rule

        bad = window_rule(name="bad", sql="SELECT COUNT(*) FROM t GROUP BY card_id")
        """,
    )
    with pytest.raises(RuleCompileError) as raised:
        load_rules([path])
    line = path.read_text().splitlines()[2]
    assert (raised.value.line, raised.value.column) == (3, line.index("GROUP BY") + 1)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("allowed_lateness=30", "allowed_lateness must be whole milliseconds"),
        ("allowed_lateness=timedelta(microseconds=1)", "allowed_lateness"),
        ("allowed_lateness=timedelta(seconds=-1)", "allowed_lateness"),
        ("emit='later'", "unknown emit"),
        ("sql=f'SELECT {LIMIT}'", "FROM <stream> is missing"),  # computed SQL: the call's line
    ],
)
def test_option_errors_point_at_the_call(tmp_path: Path, arguments: str, message: str) -> None:
    path = write(
        tmp_path,
        "bad.py",
        f"""
        from datetime import timedelta
        from streamproc import window_rule

        LIMIT = 5
        SQL = "SELECT COUNT(*) FROM t GROUP BY {HOUR}"
        bad = window_rule(
            name="bad",
            {arguments},
            **({{}} if "sql=" in {arguments!r} else {{"sql": SQL}}),
        )
        """,
    )
    with pytest.raises(RuleCompileError, match=message) as raised:
        load_rules([path])
    assert (raised.value.file, raised.value.line, raised.value.column) == (str(path), 6, None)


# --------------------------------------------------------------------------- shipped rules


def test_shipped_rules_load() -> None:
    rules = load_rules([REPO / "rules"])
    counts = (len(rules.rules), len(rules.window_rules), len(rules.stateful_rules), len(rules))
    assert counts == (1, 2, 1, 4)
    velocity = rules.window_by_name("card_velocity")
    assert (velocity.window, velocity.emit, velocity.severity) == (
        Sliding(600_000),
        "early",
        "HIGH",
    )
    assert (velocity.group_by, velocity.select, velocity.time_field) == (
        ("card_id",),
        ("card_id", "n"),
        "event_time",
    )
    assert velocity.having is not None
    assert velocity.having({"COUNT(*)": 6, "n": 6, "card_id": "c"}) is True  # the 6th fires
    assert velocity.having({"COUNT(*)": 5, "n": 5, "card_id": "c"}) is False
    spend = rules.window_by_name("hourly_spend")
    assert (spend.window, spend.emit, spend.allowed_lateness_ms) == (
        Tumble(3_600_000),
        "final",
        60_000,
    )
    assert spend.select == ("card_id", "total", "n")
    assert spend.having is not None
    values = {"SUM(amount)": 10_000, "total": 10_000, "COUNT(*)": 3, "n": 3, "card_id": "c"}
    assert spend.having(values) is False
    assert spend.having({**values, "SUM(amount)": 10_000.5}) is True
