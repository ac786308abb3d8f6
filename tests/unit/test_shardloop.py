"""The shard processor's generated loop: its source holds no rule text, and each of its steps
refuses a bad record for its own rules only, as the general steps it stands for do."""

from __future__ import annotations

import ast
import gc
import random
import re
import textwrap
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from streamproc import inventory_rule, processor, rule, window_rule
from streamproc.processor import ShardProcessor
from streamproc.records import Record, make_alert_id
from streamproc.ruleset import RuleSet, predicate_rule
from streamproc.shardloop import LoopShape, loop_source
from streamproc.windows import fastpaths
from streamproc.windows.aggregates import function_of

ARRIVAL = 1_767_225_600_000  # 2026-01-01T00:00:00Z, every record's arrival time


@predicate_rule(name="python_rule")
def python_rule(doc: Mapping[str, Any]) -> bool:
    return 1 / doc["divisor"] > 0  # ZeroDivisionError for a divisor of 0


BIG = rule(name="big", condition="amount > 100", select=["amount"])
PER_HOUR = window_rule(
    name="per_hour",
    sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
    "TUMBLE(event_time, INTERVAL '1' HOUR) HAVING COUNT(*) >= 1",
    emit="early",
)
BURST = window_rule(
    name="burst",
    sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
    "SLIDING(event_time, INTERVAL '1' MINUTE) HAVING COUNT(*) >= 1",
)
NESTED = window_rule(
    name="nested",
    sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
    "SLIDING(meta.ts, INTERVAL '1' HOUR) HAVING COUNT(*) >= 1",
)
ARRIVED = window_rule(
    name="arrived",
    sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
    "SLIDING(ARRIVAL_TIME, INTERVAL '1' MINUTE) HAVING COUNT(*) >= 1",
)
STOCK = inventory_rule(name="stock", reorder_threshold=5, initial_quantity=6)
MIXED = RuleSet(
    (BIG, python_rule), window_rules=(PER_HOUR, BURST, NESTED, ARRIVED), stateful_rules=(STOCK,)
)


def tx(seq: int, **changes: Any) -> Record:
    doc: dict[str, Any] = {
        "tx_id": f"t{seq}",
        "card_id": "c1",
        "amount": 500,
        "divisor": 1,
        "event_time": f"2026-01-01T00:{seq:02d}:00Z",
        "meta": {"ts": f"2026-01-01T00:{seq:02d}:00Z"},
        "store_id": "s1",
        "product_id": "p1",
        "quantity": -1,
    }
    doc.update(changes)
    data = orjson.dumps({k: v for k, v in doc.items() if v is not None})
    return Record(data, "pk", str(seq), 0, ARRIVAL + seq, "shard-1")


def refusals(processor: ShardProcessor, records: list[Record]) -> list[tuple[str, str | None]]:
    return [(d.sequence_number, d.rule) for d in processor.process(records).dead_letters]


def test_each_step_refuses_a_record_for_its_own_rules_only() -> None:
    processor = ShardProcessor(MIXED, default_sinks=("sqs",), shard_id="shard-1")
    first = processor.process([tx(1)])
    assert sorted(a.rule for a in first.alerts) == sorted(
        ["big", "python_rule", "per_hour", "burst", "nested", "arrived", "stock"]
    )
    assert first.dead_letters == []
    records = [
        tx(2, event_time="yesterday"),  # the event_time run (two rules) and the stock rule
        tx(3, meta=None),  # the nested time field's rule
        tx(4, divisor=0),  # the Python condition
        tx(5, amount=None),  # the SQL condition's field is missing
        Record(b"{not json", "pk", "6", 0, ARRIVAL, "shard-1"),  # every rule: undecodable
        tx(7, event_time="2026-01-01T00:00:30Z"),  # behind both event_time rules' watermark
        tx(8, event_time="2026-02-01T00:00:00Z"),  # a month ahead of its arrival
    ]
    got = refusals(processor, records)
    assert got == [
        ("2", "per_hour"),
        ("2", "burst"),
        ("2", "stock"),
        ("3", "nested"),
        ("4", "python_rule"),
        ("5", "big"),
        ("6", None),
        ("7", "per_hour"),
        ("7", "burst"),
        ("8", "per_hour"),
        ("8", "burst"),
    ]
    assert processor.windows.late_events == [1, 1, 0, 0]
    # Every record reached every step it was good for: the arrival-time window took all six
    # decodable ones besides the first, the nested one all but record 3.
    assert processor.windows.operators[3].state_size() == (1, 7)
    assert processor.windows.operators[2].state_size()[1] == 6


def test_fused_conditions_fall_back_to_each_condition_when_one_raises() -> None:
    small = rule(name="small", condition="amount < 10", select=["amount"])
    text = rule(name="text", condition="note = 'x'", select=["note"])
    processor = ShardProcessor(RuleSet((BIG, small, text)), shard_id="shard-1")
    assert processor._fused is not None
    result = processor.process([tx(1, note="x"), tx(2, amount=5, note=None), tx(3, amount=None)])
    assert [(a.sequence_number, a.rule) for a in result.alerts] == [
        ("1", "big"),
        ("1", "text"),
        ("2", "small"),
    ]
    assert [(d.sequence_number, d.rule) for d in result.dead_letters] == [
        ("2", "text"),
        ("3", "big"),
        ("3", "small"),
        ("3", "text"),
    ]
    assert result.matches == [1, 1, 1]


# What the templates name: their own variables, the values the processor binds (numbered per
# step) and the builtins and methods they call.
_TEMPLATE_NAME = re.compile(
    r"[a-z_]+|[A-Z_]+|[chs][0-9]+|[TS][0-9]+|time[0-9]+|RecordError|Exception"
    r"|[A-Za-z_0-9]+_h[0-9]+"  # a window fast path's names, written into the loop
)


def test_the_source_is_templates_and_numbers_whatever_the_rules_say() -> None:
    """Rule names and field names reach the loop as values only: its source has no text of
    theirs, however odd, and still evaluates them."""
    odd = 'x"); __import__("os"); ("'
    weird = rule(name="weird", condition=f'"{odd.replace(chr(34), chr(34) * 2)}" = 1')
    timed = window_rule(
        name="timed",
        sql=f'SELECT COUNT(*) AS n FROM t GROUP BY TUMBLE("{odd.replace(chr(34), chr(34) * 2)}", '
        "INTERVAL '1' HOUR) HAVING COUNT(*) >= 1",
        emit="early",
    )
    stock = inventory_rule(name="stock", reorder_threshold=1, quantity_field=odd)
    rules = RuleSet((weird,), window_rules=(timed,), stateful_rules=(stock,))
    processor = ShardProcessor(rules, identity_field=odd, shard_id="shard-1")
    source = processor._compile_loop().source
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            assert not isinstance(node.value, str) or node.value == "=", node.value
        if isinstance(node, ast.Name):
            assert _TEMPLATE_NAME.fullmatch(node.id), node.id
    assert odd not in source and "weird" not in source and "stock" not in source
    doc = {odd: 1, "event_time": "2026-01-01T00:00:00Z", "store_id": "s", "product_id": "p"}
    data = orjson.dumps(doc)
    result = processor.process([Record(data, "pk", "1", 0, ARRIVAL, "shard-1")])
    assert [a.rule for a in result.alerts] == ["weird", "timed"]
    assert result.alerts[0].alert_id != ""
    assert [d.rule for d in result.dead_letters] == []


def test_a_rule_set_gets_only_the_steps_it_needs() -> None:
    conditions_only = loop_source(
        LoopShape(conditions=2, fused=True, runs=(), stateful=0, skew=True)
    )
    assert "fused(doc)" in conditions_only
    assert "position" not in conditions_only and "c0" not in conditions_only
    windows = loop_source(
        LoopShape(
            conditions=0,
            fused=False,
            runs=((True, True, (0, 1)), (False, False, (2,))),
            stateful=1,
            skew=False,
        )
    )
    assert [windows.count(f"h{i}(") for i in range(3)] == [1, 1, 1]
    assert "SKEW" not in windows and "record.arrival_ms" in windows
    assert "s0(" in windows and not re.search(r"\bfused\(", windows)


def test_a_dropped_processor_is_freed_at_once() -> None:
    """Nothing of a processor waits for the cyclic collector once it is dropped: the runtime
    drops one when its shard ends or its lease moves, and its window and stock state can be
    hundreds of MB. A cycle anywhere on the way to that state (a loop bound to its processor's
    methods, an operator keeping its own fast-path closure, a state its own record handler)
    would hold all of it until a full collection, and make that collection walk it."""
    sums = window_rule(
        name="sums",
        sql="SELECT card_id, SUM(amount) AS total FROM t GROUP BY card_id, "
        "SLIDING(event_time, INTERVAL '1' HOUR) HAVING SUM(amount) > 1000",
    )
    hopping = window_rule(
        name="hopping",
        sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
        "HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE) HAVING COUNT(*) >= 2",
    )
    sessions = window_rule(
        name="sessions",
        sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
        "SESSION(event_time, INTERVAL '10' MINUTE) HAVING COUNT(*) >= 2",
    )
    rules = RuleSet(
        MIXED.rules,
        window_rules=(*MIXED.window_rules, sums, hopping, sessions),
        stateful_rules=MIXED.stateful_rules,
    )
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage to be named
    try:
        processor = ShardProcessor(rules, default_sinks=("sqs",), shard_id="shard-1")
        result = processor.process([tx(seq, card_id=f"c{seq % 3}") for seq in range(1, 40)])
        assert len(result.alerts) > 39 and result.dead_letters == []
        del processor, result
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith("streamproc")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == []


@pytest.mark.parametrize("conditions", [(), (BIG,)])
def test_alert_ids_name_their_record_though_its_identity_is_made_only_for_an_alert(
    conditions: tuple[Any, ...],
) -> None:
    """The loop makes a record's identity only once an alert needs it (a condition's match, a
    window's results, a stateful rule's alert); every id is still the one its record gives:
    its tx_id, or without one its place in the stream. With no condition, the window and the
    inventory steps are the first to need it."""
    stock = inventory_rule(
        name="stock", reorder_threshold=5, initial_quantity=6, stock_sink="inventory_table"
    )
    rules = RuleSet(conditions, window_rules=(BURST,), stateful_rules=(stock,))
    processor = ShardProcessor(rules, default_sinks=("sqs",), shard_id="shard-1")
    # 1, 2: a new card's burst and a product's first sale, crossing its threshold; 3: a
    # crossing without a burst (c2 is still bursting); 4: a stock update alone.
    records = [tx(1), tx(2, tx_id=None, card_id="c2", product_id="p2")]
    for seq, product in [(3, "p3"), (4, "p1")]:
        records.append(
            tx(seq, card_id="c2", product_id=product, event_time=f"2026-01-01T00:02:{seq}0Z")
        )
    got = {(a.rule, a.sequence_number): a.alert_id for a in processor.process(records).alerts}
    for seq, card, identity in [
        ("1", "c1", "tx_id=t1"),
        ("2", "c2", "shard-1/2/0"),
        ("3", None, "tx_id=t3"),
        ("4", None, "tx_id=t4"),
    ]:
        if card is not None:
            assert got.pop(("burst", seq)) == make_alert_id(
                "burst", 1, f'shard=shard-1|key=["{card}"]|event={identity}'
            )
        if seq != "4":
            assert got.pop(("stock", seq)) == make_alert_id("stock", 1, identity)
        assert got.pop(("stock:stock", seq)) == make_alert_id("stock", 1, identity)
        if conditions:
            assert got.pop(("big", seq)) == make_alert_id("big", 1, identity)
    assert got == {}


@pytest.mark.parametrize("inlined", [True, False])
def test_an_early_tumble_remembers_verdicts_by_its_own_counts(
    inlined: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An early Tumble whose aggregates are all counts remembers HAVING's verdict per tuple of
    counts, through the loop's fast path as through the call. Card c leaves (3 events, 2
    merchants) known false; card d's (3, 1) holds and must fire, not be taken for c's."""
    monkeypatch.setattr(processor, "INLINE_WINDOW_STEPS", inlined)
    once = window_rule(
        name="one_merchant_thrice",
        sql="SELECT card_id, COUNT(*) AS n, COUNT(DISTINCT merchant) AS d FROM t "
        "GROUP BY card_id, TUMBLE(event_time, INTERVAL '1' HOUR) "
        "HAVING COUNT(*) = 3 AND COUNT(DISTINCT merchant) = 1",
        emit="early",
    )
    shard = ShardProcessor(RuleSet((), window_rules=(once,)), shard_id="shard-1")
    assert ("FIRED_h0" in shard._compile_loop().source) is inlined
    cards = [("c", "m1"), ("c", "m2"), ("c", "m2"), ("d", "m1"), ("d", "m1"), ("d", "m1")]
    records = [tx(seq, card_id=c, merchant=m) for seq, (c, m) in enumerate(cards, start=1)]
    alerts = shard.process(records).alerts
    assert [(a.sequence_number, a.key, a.fields) for a in alerts] == [
        ("6", "d", {"card_id": "d", "n": 3, "d": 1})
    ]


def test_a_stateful_rule_that_raises_dead_letters_the_record_and_names_itself() -> None:
    """A stateful rule's own code failing on a record (here a threshold function) is bad data
    for that rule only: the record's dead letter names the rule and the error, and the other
    steps and records go on."""

    def threshold(store: str, product: str) -> float:
        if product == "broken":
            raise KeyError(product)
        return 5.0

    stock = inventory_rule(name="stock", reorder_threshold=threshold, initial_quantity=6)
    rules = RuleSet((BIG,), stateful_rules=(stock,))
    processor = ShardProcessor(rules, default_sinks=("sqs",), shard_id="shard-1")
    result = processor.process([tx(1, product_id="broken"), tx(2)])
    assert [(d.sequence_number, d.rule, d.reason) for d in result.dead_letters] == [
        ("1", "stock", "rule 'stock' raised KeyError: 'broken'")
    ]
    assert sorted((a.sequence_number, a.rule) for a in result.alerts) == [
        ("1", "big"),
        ("2", "big"),
        ("2", "stock"),
    ]


def test_generated_fast_paths_run_in_the_loop_and_other_handlers_are_called() -> None:
    """A window rule with a generated fast path has its steps in the loop (its names numbered
    by the rule's index); one without (a sliding SUM) is called."""
    total = window_rule(
        name="total",
        sql="SELECT card_id, SUM(amount) AS s FROM t GROUP BY card_id, "
        "SLIDING(event_time, INTERVAL '1' MINUTE) HAVING SUM(amount) > 0",
    )
    rules = RuleSet((), window_rules=(PER_HOUR, total, BURST))
    source = ShardProcessor(rules, shard_id="shard-1")._compile_loop().source
    assert not re.search(r"\bh0\(", source) and "OP_h0._floor" in source
    assert "results = h1(doc, event_ms, record, identity)" in source
    assert not re.search(r"\bh2\(", source) and "OP_h2._floor" in source


# A function of the shape the fast paths have: returns at several depths, an elif, a path that
# falls off the end (None), a local named like a loop name.
_BRANCHES = """
def handle(doc, event_time_ms, record, identity):
    x = doc.get(K)
    results = 0
    if x is None:
        return A
    if x > 1:
        y = x * 2
        if y > 10:
            return [y, results]
    elif x < 0:
        return [identity, event_time_ms]
    else:
        y = 0
    z = y + 1
    if z > 3:
        return [z, record]
"""


def test_inlined_statements_return_what_the_call_returns_on_every_path() -> None:
    handler = fastpaths._generated(_BRANCHES, {"__builtins__": {}, "K": "k", "A": ()})
    form = fastpaths.inline(handler, "h3", "results")
    assert form is not None
    statements, names = form
    assert set(names) == {"K_h3", "A_h3"}
    # the statements in a function of the loop's parameters, returning what they set
    wrapper = "def run(doc, event_ms, record, identity):\n"
    wrapper += textwrap.indent(statements, "    ") + "\n    return results\n"
    run = function_of(wrapper, {"__builtins__": {}, **names}, "run")
    outcomes = set()
    for value in (None, -3, 0, 1, 2, 3, 5, 6, 40):
        doc = {} if value is None else {"k": value}
        expected = handler(doc, 77, "rec", "e1")  # type: ignore[arg-type]
        assert run(doc, 77, "rec", "e1") == expected, value
        outcomes.add(None if not expected else expected[-1])  # which return it came from
    assert outcomes == {None, 0, 77, "rec"}  # (), [y, 0], [e1, 77], [z, rec], falling off


def test_a_handler_that_is_not_generated_or_returns_inside_a_loop_is_not_inlined() -> None:
    looped = fastpaths._generated(
        "def handle(doc, event_time_ms, record, identity):\n    for x in doc:\n        return x\n",
        {"__builtins__": {}},
    )
    assert fastpaths.inline(looped, "h0", "results") is None
    nested = fastpaths._generated(
        "def handle(doc, event_time_ms, record, identity):\n"
        "    add = lambda y: y + 1\n    return add(2)\n",
        {"__builtins__": {}},
    )
    assert fastpaths.inline(nested, "h0", "results") is None
    assert fastpaths.inline(lambda doc, t, record, identity: (), "h0", "results") is None


def _random_records(seed: int, count: int) -> list[Record]:
    """Records whose keys repeat, with times mostly advancing and sometimes going back (out of
    order, late), and some bad data: missing or non-scalar keys, bad times."""
    rng = random.Random(seed)
    at = ARRIVAL
    records = []
    for seq in range(1, count + 1):
        at += rng.choice([0, 0, 1, 250, 1_000, 7_000, 40_000, 200_000, -3_000, -90_000])
        doc: dict[str, Any] = {
            "tx_id": f"t{seq}",
            "card_id": rng.choice(["c1", "c2", "c3", "c4", 7, 7.0, True]),
            "amount": rng.choice([1, 2.5, 500, 3_000, None, "x"]),
            "merchant": rng.choice(["m1", "m2", "m3", None]),
            "event_time": at,
            "meta": {"card": rng.choice(["c1", "c2"])},
        }
        spoil = rng.random()
        if spoil < 0.04:
            del doc["card_id"]
        elif spoil < 0.06:
            doc["card_id"] = ["c1"]
        elif spoil < 0.08:
            doc["event_time"] = "not a time"
        data = orjson.dumps({k: v for k, v in doc.items() if v is not None})
        records.append(Record(data, "pk", str(seq), 0, ARRIVAL + seq, "shard-1"))
    return records


def _every_kind() -> RuleSet:
    def sql(select: str, window: str, having: str, where: str = "") -> str:
        return f"SELECT card_id, {select} FROM t {where} GROUP BY card_id, {window} HAVING {having}"

    tumble = "TUMBLE(event_time, INTERVAL '10' SECOND)"
    windows = [
        window_rule(
            name="tumble_early", sql=sql("COUNT(*) AS n", tumble, "COUNT(*) >= 2"), emit="early"
        ),
        window_rule(
            name="tumble_final",
            sql=sql(
                "SUM(amount) AS s, COUNT(DISTINCT merchant) AS m",
                tumble,
                "COUNT(*) >= 1",
                "WHERE amount > 1",
            ),
            allowed_lateness=__import__("datetime").timedelta(seconds=5),
        ),
        window_rule(
            name="hop",
            sql=sql(
                "COUNT(*) AS n",
                "HOP(event_time, INTERVAL '5' SECOND, INTERVAL '20' SECOND)",
                "COUNT(*) >= 2",
            ),
        ),
        window_rule(
            name="session_early",
            sql=sql(
                "COUNT(*) AS n, SUM(amount) AS s",
                "SESSION(event_time, INTERVAL '30' SECOND)",
                "COUNT(*) >= 3",
            ),
            emit="early",
            late="correction",
        ),
        window_rule(
            name="sliding",
            sql=sql("COUNT(*) AS n", "SLIDING(event_time, INTERVAL '1' MINUTE)", "COUNT(*) >= 3"),
            allowed_lateness=__import__("datetime").timedelta(seconds=10),
        ),
        window_rule(
            name="by_path",
            sql="SELECT COUNT(*) AS n FROM t GROUP BY meta.card, "
            "TUMBLE(event_time, INTERVAL '1' MINUTE) HAVING COUNT(*) >= 1",
            emit="early",
        ),
        window_rule(
            name="arrived",
            sql=sql("COUNT(*) AS n", "SLIDING(ARRIVAL_TIME, INTERVAL '1' SECOND)", "COUNT(*) >= 2"),
        ),
    ]
    return RuleSet((), window_rules=tuple(windows))


@pytest.mark.parametrize("seed", range(6))
def test_inlined_window_steps_do_what_the_calls_do(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every window kind, early and final, WHERE, a GROUP BY path, lateness and corrections,
    over records out of order, late and bad: the loop with the fast paths' steps written in
    gives the same alerts, dead letters and window state, batch by batch, as the loop that
    calls them."""
    records = _random_records(seed, 600)
    processors, sources = [], []
    for inlined in (True, False):
        monkeypatch.setattr(processor, "INLINE_WINDOW_STEPS", inlined)
        processors.append(ShardProcessor(_every_kind(), shard_id="shard-1"))
        sources.append(processors[-1]._compile_loop().source)
    assert "OP_h0" in sources[0] and not re.search(r"\bh0\(", sources[0])
    assert "OP_h0" not in sources[1] and re.search(r"\bh0\(", sources[1])
    alerts = 0
    for start in range(0, len(records), 25):
        batch = records[start : start + 25]
        results = [p.process(batch) for p in processors]
        seen = [
            (
                [
                    (a.alert_id, a.rule, a.key, a.fields, a.window_start, a.window_end)
                    for a in r.alerts
                ],
                [(d.sequence_number, d.rule, d.reason) for d in r.dead_letters],
                r.matches,
            )
            for r in results
        ]
        assert seen[0] == seen[1], start
        alerts += len(results[0].alerts)
        states = [
            [(op.watermark_ms, op.state_size(), op.oldest_position()) for op in p.windows.operators]
            for p in processors
        ]
        assert states[0] == states[1], start
    assert alerts > 0
