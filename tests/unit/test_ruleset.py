"""Rules, the declaration API and loading rule modules by path."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import streamproc
from streamproc.errors import MissingFieldError, RuleCompileError
from streamproc.ruleset import Rule, RuleSet, load_rules, predicate_rule, rule

REPO = Path(__file__).resolve().parents[2]
TX: dict[str, Any] = {
    "tx_id": "t-1",
    "card_id": "c-1",
    "amount": 2500,
    "currency": "USD",
    "merchant": "Acme Hardware",
    "state": "NY",
    "home_state": "CA",
    "store_id": "s-9",
    "product_id": "p-3",
    "quantity": -1,
    "event_time": "2024-05-01T12:00:00Z",
}


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
    return path


def load_error(paths: list[Path | str]) -> RuleCompileError:
    with pytest.raises(RuleCompileError) as raised:
        load_rules(paths)
    return raised.value


# --------------------------------------------------------------------------- the shipped rule


def test_fraud_rules_load_and_match() -> None:
    rules = load_rules([REPO / "rules"])
    seed = rules.by_name("high_value_out_of_state")
    assert (seed.version, seed.severity, seed.key, seed.sinks) == (1, "HIGH", "card_id", ())
    assert seed.condition_text == "amount > 2000 AND state <> home_state"
    assert seed.origin.endswith("fraud.py:" + seed.origin.rsplit(":", 1)[1])
    assert seed.condition(TX) is True
    assert seed.condition({**TX, "state": "CA"}) is False  # in state
    assert seed.condition({**TX, "amount": 2000}) is False  # not above 2000
    assert seed.condition({**TX, "amount": 2000.01}) is True
    key, fields = seed.extract(TX)
    assert key == "c-1"
    assert fields == {
        name: TX[name]
        for name in (
            "tx_id",
            "card_id",
            "amount",
            "currency",
            "merchant",
            "state",
            "home_state",
            "event_time",
        )
    }
    with pytest.raises(MissingFieldError) as raised:
        seed.condition({"amount": 2500, "state": "NY"})
    assert raised.value.field == "home_state"


def test_loading_writes_no_bytecode_next_to_the_rules(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "from streamproc import rule\nr = rule(name='r', condition='x = 1')\n")
    load_rules([tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py"]


def test_rule_and_predicate_rule_are_exported_from_the_package() -> None:
    assert streamproc.rule is rule
    assert streamproc.predicate_rule is predicate_rule


# --------------------------------------------------------------------------- loading


def test_load_directory_in_name_order_and_definition_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        "b_inventory.py",
        """
        from streamproc import predicate_rule, rule

        low_stock = rule(name="low_stock", condition="quantity < -10", select=["store_id"])
        alias = low_stock  # the same Rule under two names counts once

        @predicate_rule(name="restock", select=["product_id"], key="store_id")
        def restock(tx):
            '''Any restock.'''
            return tx["quantity"] > 0
        """,
    )
    write(
        tmp_path,
        "a_fraud.py",
        """
        from streamproc.ruleset import rule

        zeta = rule(name="zeta", condition="amount > 1")
        alpha = rule(name="alpha", condition="amount > 2", severity="LOW")
        """,
    )
    write(tmp_path, "_helpers.py", "raise RuntimeError('files starting with _ are skipped')\n")
    write(tmp_path, "notes.txt", "not python")
    rules = load_rules([tmp_path])
    assert [r.name for r in rules] == ["zeta", "alpha", "low_stock", "restock"]
    assert len(rules) == 4
    assert rules.by_name("alpha").severity == "LOW"
    assert rules.by_name("restock").description == "Any restock."
    assert rules.by_name("low_stock").origin == f"{tmp_path / 'b_inventory.py'}:3"
    with pytest.raises(KeyError, match="no rule named 'nope'"):
        rules.by_name("nope")
    # A file named both directly and through its directory is loaded once.
    assert len(load_rules([tmp_path, tmp_path / "a_fraud.py"])) == 4
    assert load_rules(str(tmp_path / "a_fraud.py")).rules[0].name == "zeta"  # one path, bare


def test_ruleset_fields() -> None:
    sql = rule(name="sql", condition="a.b > 1 AND c IS NULL", select=["d"], key="e")
    assert sql.fields == frozenset({"a.b", "c", "d", "e"})
    assert RuleSet((sql,)).fields == frozenset({"a.b", "c", "d", "e"})
    python = rule(name="py", condition=lambda tx: True, select=["d"])
    assert python.fields is None  # a Python predicate may read anything
    assert RuleSet((sql, python)).fields is None


def test_python_syntax_error_reports_file_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "broken.py",
        """
        from streamproc import rule

        ok = rule(name="ok", condition="amount > 1")
        bad = rule(name="bad" condition="amount > 1")
        """,
    )
    error = load_error([path])
    assert error.file == str(path)
    assert error.line == 4
    assert error.column is not None and error.column >= 11
    assert "syntax" in error.message.lower()
    assert f"{path}:4:{error.column}: " in str(error)


def test_exception_while_importing_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "boom.py",
        """
        from streamproc import rule

        LIMIT = int("two thousand")
        """,
    )
    error = load_error([path])
    assert error.file == str(path) and error.line == 3
    assert "ValueError" in error.message
    assert isinstance(error.__cause__, ValueError)


def test_sql_error_is_located_in_the_rule_module(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sqlbad.py",
        """
        from streamproc import rule

        bad = rule(
            name="bad",
            condition="amount > 2000 AND foo(x) = 1",
        )
        """,
    )
    error = load_error([path])
    line = path.read_text().splitlines()[4]
    assert (error.file, error.line, error.column) == (str(path), 5, line.index("foo") + 1)
    assert error.rule == "bad"
    assert "function foo() is not allowed" in error.message
    assert "(condition line 1, column 19)" in error.message
    assert error.hint


def test_sql_error_in_multiline_condition(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "multi.py",
        '''
        from streamproc import rule

        bad = rule(name="bad", condition="""amount > 2000
          AND state <>""")
        ''',
    )
    error = load_error([path])
    column = path.read_text().splitlines()[3].index("<>") + 1  # on the condition's 2nd line
    assert (error.line, error.column) == (4, column)
    assert "(condition line 2, column 13)" in error.message


def test_sql_error_in_computed_condition_points_at_the_declaration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "computed.py",
        """
        from streamproc import rule

        LIMIT = 2000
        bad = rule(
            name="bad",
            condition=f"amount > {LIMIT} AND",
        )
        """,
    )
    error = load_error([path])
    assert (error.file, error.line, error.column) == (str(path), 4, None)
    assert "condition line 1" in error.message


def test_duplicate_names_name_both_origins(tmp_path: Path) -> None:
    write(
        tmp_path, "a.py", "from streamproc import rule\nx = rule(name='dup', condition='a = 1')\n"
    )
    write(
        tmp_path, "b.py", "from streamproc import rule\n\ny = rule(name='dup', condition='b = 1')\n"
    )
    error = load_error([tmp_path])
    assert f"{tmp_path / 'a.py'}:2" in error.message
    assert f"{tmp_path / 'b.py'}:3" in error.message
    assert (error.file, error.line, error.rule) == (str(tmp_path / "b.py"), 3, "dup")


def test_no_rules_found(tmp_path: Path) -> None:
    error = load_error([tmp_path])
    assert "no rules found" in error.message and error.hint
    write(tmp_path, "empty.py", "LIMIT = 5\n")
    assert "no rules found" in load_error([tmp_path]).message


def test_bad_paths(tmp_path: Path) -> None:
    assert "does not exist" in load_error([tmp_path / "missing"]).message
    text = write(tmp_path, "rules.txt", "")
    error = load_error([text])
    assert "not a .py file" in error.message and error.file == str(text)


# --------------------------------------------------------------------------- Python predicates


def test_python_predicate_rule() -> None:
    big = rule(name="big", condition=lambda tx: tx["amount"] > 100, select=["tx_id"])
    assert big.condition({"amount": 101}) is True
    assert big.condition({"amount": 100}) is False
    assert big.condition_text is None
    with pytest.raises(MissingFieldError) as raised:
        big.condition({})
    assert raised.value.field == "amount"


def test_predicate_rule_decorator() -> None:
    @predicate_rule(name="nested", version=2, select=["tx_id"], sinks=["sqs"], severity="LOW")
    def nested(tx: Any) -> object:
        return tx["merchant"]["country"] == "US" and tx["amount"]  # truthy, not a bool

    assert isinstance(nested, Rule)
    assert (nested.name, nested.version, nested.sinks, nested.severity) == (
        "nested",
        2,
        ("sqs",),
        "LOW",
    )
    assert nested.condition({"merchant": {"country": "US"}, "amount": 5}) is True
    assert nested.condition({"merchant": {"country": "US"}, "amount": 0}) is False
    with pytest.raises(MissingFieldError) as raised:
        nested.condition({"merchant": {}})
    assert raised.value.field == "country"
    assert nested.origin.startswith(__file__ + ":")


def test_predicate_exceptions_other_than_key_error_propagate() -> None:
    def divide(tx: Any) -> bool:
        return bool(1 / tx["n"])

    broken = rule(name="broken", condition=divide)
    with pytest.raises(ZeroDivisionError):
        broken.condition({"n": 0})
    with pytest.raises(TypeError):
        rule(name="typed", condition=lambda tx: tx["a"] + 1).condition({"a": "x"})


# --------------------------------------------------------------------------- extract


def test_extract_key_and_fields() -> None:
    r = rule(name="r", condition="TRUE", select=["tx_id", "merchant.name"], key="card_id")
    assert r.extract({"tx_id": "t", "merchant": {"name": "M"}, "card_id": "c"}) == (
        "c",
        {"tx_id": "t", "merchant.name": "M"},
    )
    doc = {"tx_id": None, "merchant": {"name": "M"}}
    for value, text in [
        (None, None),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        ({"b": 1}, '{"b":1}'),
    ]:
        assert r.extract({**doc, "card_id": value})[0] == text
    with pytest.raises(MissingFieldError) as raised:
        r.extract({"tx_id": "t", "merchant": "M", "card_id": "c"})
    assert raised.value.field == "merchant.name"
    with pytest.raises(MissingFieldError) as raised:
        r.extract({"tx_id": "t", "merchant": {"name": "M"}})
    assert raised.value.field == "card_id"
    assert rule(name="nokey", condition="TRUE").extract({"a": 1}) == (None, {})


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": "Bad-Name"}, "invalid rule name"),
        ({"name": "1st"}, "invalid rule name"),
        ({"name": ""}, "invalid rule name"),
        ({"version": 0}, "version must be an integer >= 1"),
        ({"version": "1"}, "version must be an integer >= 1"),
        ({"version": True}, "version must be an integer >= 1"),
        ({"severity": "URGENT"}, "unknown severity"),
        ({"severity": "high"}, "unknown severity"),
        ({"select": "tx_id"}, "select must be a list of strings"),
        ({"select": ["tx_id", 3]}, "select must be a list of strings"),
        ({"select": ["a..b"]}, "invalid field path 'a..b'"),
        ({"select": ["__class__"]}, "reserved"),
        ({"key": "card.__dict__"}, "reserved"),
        ({"key": ""}, "invalid field path"),
        ({"sinks": "sqs"}, "sinks must be a list of strings"),
        ({"sinks": [""]}, "sink names must not be empty"),
        ({"condition": 42}, "condition must be SQL text or a callable"),
        ({"condition": "amount >"}, "syntax error"),
    ],
)
def test_validation(arguments: dict[str, Any], message: str) -> None:
    declaration: dict[str, Any] = {"name": "ok_rule", "condition": "amount > 1", **arguments}
    with pytest.raises(RuleCompileError) as raised:
        rule(**declaration)
    error = raised.value
    assert message in error.message
    assert error.file == __file__ and error.line is not None  # points at the rule(...) call
    assert error.hint or message in {
        "select must be a list of strings",
        "sinks must be a list of strings",
        "sink names must not be empty",
        "condition must be SQL text or a callable",
    }


def test_rule_constructed_directly_is_validated_too() -> None:
    with pytest.raises(RuleCompileError, match="invalid rule name"):
        Rule(name="X", version=1, condition=lambda doc: True, select=(), sinks=())
    direct = Rule(name="x", version=1, condition=lambda doc: True, select=["a"], sinks=["s"])  # type: ignore[arg-type]
    assert direct.select == ("a",) and direct.sinks == ("s",)


def test_ruleset_rejects_duplicates() -> None:
    one = rule(name="same", condition="a = 1")
    two = rule(name="same", condition="a = 2")
    with pytest.raises(RuleCompileError, match="duplicate rule name 'same'") as raised:
        RuleSet((one, two))
    assert one.origin in raised.value.message and two.origin in raised.value.message
