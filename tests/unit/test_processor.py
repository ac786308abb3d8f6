"""The hot path: decoding limits, alert identity, and bad input as data."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproc.processor import DecodeLimits, ShardProcessor, decode, nesting_depth
from streamproc.records import Record, make_alert_id
from streamproc.ruleset import RuleSet, predicate_rule, rule

HIGH = rule(
    name="high_value_out_of_state",
    version=3,
    condition="amount > 2000 AND state <> home_state",
    select=["tx_id", "amount"],
    key="card_id",
    severity="HIGH",
)


def record(doc: Any, seq: int, *, raw: bytes | None = None) -> Record:
    data = raw if raw is not None else orjson.dumps(doc)
    return Record(data, "pk", str(seq), 0, 1_700_000_000_000, "shardId-000000000000")


def tx(**overrides: Any) -> dict[str, Any]:
    base = {"tx_id": "t1", "card_id": "c1", "amount": 2500, "state": "NY", "home_state": "CA"}
    base.update(overrides)
    return base


def test_alert_carries_rule_identity_fields_and_position() -> None:
    processor = ShardProcessor(RuleSet((HIGH,)), default_sinks=("sqs", "sns"))
    result = processor.process([record(tx(event_time="2026-01-01T00:00:00Z"), 7)])
    assert result.matches == [1]
    (alert,) = result.alerts
    assert alert.alert_id == make_alert_id("high_value_out_of_state", 3, "tx_id=t1")
    assert alert.key == "c1"
    assert alert.fields == {"tx_id": "t1", "amount": 2500}
    assert alert.severity == "HIGH"
    assert alert.sinks == ("sqs", "sns")
    assert (alert.shard_id, alert.sequence_number) == ("shardId-000000000000", "7")
    assert alert.event_time == "2026-01-01T00:00:00Z"


def test_alert_id_is_deterministic_and_falls_back_to_stream_position() -> None:
    processor = ShardProcessor(RuleSet((HIGH,)))
    first = processor.process([record(tx(), 1)]).alerts[0].alert_id
    replay = processor.process([record(tx(), 99)]).alerts[0].alert_id
    assert first == replay  # same tx_id: same alert wherever the record sits
    no_id = {k: v for k, v in tx().items() if k != "tx_id"}
    processor = ShardProcessor(RuleSet((rule(name="high_value_out_of_state", version=3,
                                             condition="amount > 2000"),)))  # fmt: skip
    a = processor.process([record(no_id, 5)]).alerts[0].alert_id
    b = processor.process([record(no_id, 6)]).alerts[0].alert_id
    assert a != b  # without an identity field the stream position is the identity
    assert a == make_alert_id("high_value_out_of_state", 3, "shardId-000000000000/5/0")


def test_rule_version_changes_the_alert_id() -> None:
    v4 = rule(name="high_value_out_of_state", version=4, condition="amount > 2000")
    a = ShardProcessor(RuleSet((HIGH,))).process([record(tx(), 1)]).alerts[0]
    b = ShardProcessor(RuleSet((v4,))).process([record(tx(), 1)]).alerts[0]
    assert a.alert_id != b.alert_id


def test_bad_records_become_dead_letters_and_good_ones_around_them_flow() -> None:
    limits = DecodeLimits(max_record_bytes=300, max_nesting_depth=4)
    processor = ShardProcessor(RuleSet((HIGH,)), limits=limits)
    deep: Any = 1
    for _ in range(6):
        deep = {"x": deep}
    batch = [
        record(tx(tx_id="good-1"), 1),
        record(None, 2, raw=b"{not json"),
        record([1, 2, 3], 3),
        record({k: v for k, v in tx().items() if k != "home_state"}, 4),
        record(tx(padding="x" * 400), 5),
        record(tx(nested=deep), 6),
        record(tx(tx_id="good-2"), 7),
    ]
    result = processor.process(batch)
    assert [a.fields["tx_id"] for a in result.alerts] == ["good-1", "good-2"]
    reasons = {d.sequence_number: d.reason for d in result.dead_letters}
    assert set(reasons) == {"2", "3", "4", "5", "6"}
    assert reasons["2"].startswith("invalid JSON")
    assert reasons["3"] == "not a JSON object: got list"
    assert "missing field 'home_state'" in reasons["4"]
    assert "high_value_out_of_state" in reasons["4"]
    assert reasons["5"].startswith("record too large")
    assert reasons["6"].startswith("nesting too deep")
    for letter in result.dead_letters:
        assert letter.kind == "record"
        assert letter.shard_id == "shardId-000000000000"
        assert letter.data == batch[int(letter.sequence_number) - 1].data


def test_sql_rules_run_as_one_function_and_a_missing_field_refuses_for_its_rule_only() -> None:
    """Two or more SQL conditions are evaluated by one fused function; when a record lacks a
    field one of them needs, the rules are called one by one: that rule dead-letters the record
    (naming the field and the rule) and the others still match, in rule order."""
    rounded = rule(name="rounded", condition="amount % 100 = 0", select=["tx_id"])
    foreign = rule(name="foreign", condition="currency <> 'USD'", select=["tx_id"])
    processor = ShardProcessor(RuleSet((HIGH, rounded, foreign)))
    assert processor._fused is not None
    result = processor.process(
        [
            record(tx(tx_id="a", currency="EUR"), 1),
            record(tx(tx_id="b", amount=2501, currency="USD"), 2),
            record(tx(tx_id="c"), 3),  # no currency
            record(tx(tx_id="d", amount=5, currency="USD"), 4),
        ]
    )
    assert [(a.rule, a.fields["tx_id"]) for a in result.alerts] == [
        ("high_value_out_of_state", "a"),
        ("rounded", "a"),
        ("foreign", "a"),
        ("high_value_out_of_state", "b"),
        ("high_value_out_of_state", "c"),
        ("rounded", "c"),
    ]
    (letter,) = result.dead_letters
    assert (letter.sequence_number, letter.rule) == ("3", "foreign")
    assert "missing field 'currency'" in letter.reason
    assert result.matches == [3, 2, 1]


def test_a_python_rule_among_sql_rules_keeps_one_call_per_rule() -> None:
    @predicate_rule(name="always", version=1)
    def always(doc: Any) -> bool:
        return True

    assert ShardProcessor(RuleSet((HIGH, always)))._fused is None
    assert ShardProcessor(RuleSet((HIGH,)))._fused is None  # one rule: nothing to fuse


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (b'{"tx_id":"f","merchant":"x"}', False),  # flat: not counted at all
        (b'{"tx_id":"a","merchant":"{[{[ not nested ]}]}"}', False),  # brackets in a string
        (b' {"tx_id":"b","nested":{"x":{"y":1}}}', True),  # leading space, depth 3
        (b'{"tx_id":"c","nested":[[1]]}', True),  # depth 3 through lists only
        (b'{"tx_id":"d","nested":[1]}', False),  # depth 2: at the limit
        (b'\n{"tx_id":"e"}', False),
    ],
)
def test_the_depth_limit_sees_every_bracket(raw: bytes, refused: bool) -> None:
    """The loop skips counting brackets for a flat object (no "[" and no "{" past the first
    byte); every other document is counted, then walked."""
    limits = DecodeLimits(max_nesting_depth=2)
    result = ShardProcessor(RuleSet((HIGH,)), limits=limits).process([record(None, 1, raw=raw)])
    reasons = [d.reason for d in result.dead_letters]
    if refused:
        assert len(reasons) == 1 and reasons[0].startswith("nesting too deep: depth 3 > limit 2")
    else:
        assert len(reasons) == 1 and "missing field" in reasons[0]  # decoded, then no amount


def test_a_failing_python_rule_dead_letters_for_that_rule_only() -> None:
    @predicate_rule(name="divides", version=1)
    def divides(doc: Any) -> bool:
        return bool(100 / doc["amount"] > 1)

    processor = ShardProcessor(RuleSet((divides, HIGH)))
    result = processor.process([record(tx(amount=0, state="NY"), 1)])
    (letter,) = result.dead_letters
    assert letter.rule == "divides"
    assert "ZeroDivisionError" in letter.reason
    assert result.matches == [0, 0]

    result = processor.process([record(tx(amount=2500), 2)])
    assert [a.rule for a in result.alerts] == ["high_value_out_of_state"]


@pytest.mark.parametrize(
    ("value", "depth"), [(1, 0), ({}, 1), ({"a": [1, {"b": 2}]}, 3), ([[[]]], 3)]
)
def test_nesting_depth(value: Any, depth: int) -> None:
    assert nesting_depth(value) == depth


def test_nesting_far_beyond_pythons_recursion_limit_is_a_dead_letter_not_a_crash() -> None:
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000  # orjson accepts up to 1,024 levels
    processor = ShardProcessor(RuleSet((HIGH,)), limits=DecodeLimits(max_nesting_depth=32))
    result = processor.process([record(None, 1, raw=deep), record(tx(), 2)])
    assert [d.sequence_number for d in result.dead_letters] == ["1"]
    assert result.dead_letters[0].reason.startswith("nesting too deep")
    assert len(result.alerts) == 1
    assert nesting_depth(orjson.loads(deep)) == 1000


def test_decode_limits_are_inclusive() -> None:
    limits = DecodeLimits(max_record_bytes=10, max_nesting_depth=2)
    assert decode(b'{"a":1234}', limits) == {"a": 1234}  # exactly 10 bytes
    assert isinstance(decode(b'{"a":12345}', limits), str)
    assert decode(b'{"a":[1]}', limits) == {"a": [1]}  # depth 2
    assert isinstance(decode(b'{"a":[[]]}', limits), str)


def test_an_event_time_far_ahead_of_arrival_is_refused_and_does_not_block_the_shard() -> None:
    from streamproc.ruleset import window_rule

    hourly = window_rule(
        name="hourly",
        sql="SELECT card_id, COUNT(*) AS n FROM t GROUP BY card_id, "
        "TUMBLE(event_time, INTERVAL '1' HOUR)",
    )
    arrival = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    processor = ShardProcessor(RuleSet((), window_rules=(hourly,)), shard_id="s")

    def rec(seq: int, when: str) -> Record:
        data = orjson.dumps({"tx_id": f"t{seq}", "card_id": "c", "event_time": when})
        return Record(data, "pk", str(seq), 0, arrival, "s")

    result = processor.process(
        [
            rec(1, "2099-01-01T00:00:00Z"),
            rec(2, "2026-01-01T00:00:00Z"),
            rec(3, "2026-01-01T00:10:00Z"),
        ]
    )
    (letter,) = result.dead_letters
    assert letter.sequence_number == "1"
    assert "ahead of the record's arrival time" in letter.reason
    assert processor.windows.operators[0].state_size() == (1, 1)  # records 2 and 3 counted
