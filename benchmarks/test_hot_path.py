"""The hot path per shard: decode alone (the floor), the seed rules by hand and through the
engine, and twenty rules by hand and through the engine (also over the same records with their
cards folded onto 500, to show what fetching per-key state from memory costs). Run:
``make bench`` (``pytest benchmarks/ --benchmark-only``).

Every benchmark processes the whole data set (``benchmarks/dataset.py``: 1,000,000 records by
default) in batches of 1,000, on one core. The hand-written loops (``benchmarks/handloop.py``
for the seed rules, ``benchmarks/handloop_twenty.py`` for the twenty) are the yardsticks: the
summary table gives each engine row's ratio to the loop of its rules. The engine's alerts are
checked against the hand loop's (same ids, same fields) before anything is timed.

Garbage collection runs as in production, with the data set frozen out of it
(``gc.freeze`` in conftest): a million records held in memory are the benchmark's, not the
engine's, and would otherwise make every full collection of both sides slower. Each round starts
from a collected heap (:func:`rounds`). Each side pays for its own state's collections (about
2 us/record each on this data); the "GC off" rows compare the two codes alone.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from benchmarks import handloop, handloop_twenty
from benchmarks.summary import HAND_LOOP, HAND_LOOP_TWENTY, peak_memory, report
from streamproc.processor import ShardProcessor
from streamproc.records import Record
from streamproc.ruleset import RuleSet, load_rules

# A round over a million records takes seconds to tens of seconds: more than the suite's default.
pytestmark = pytest.mark.timeout(1800)
HERE = Path(__file__).resolve().parent
SEED = HERE / "rulesets" / "seed.py"
TWENTY = HERE / "rulesets" / "twenty.py"
ROUNDS = 3
PAIRED_ROUNDS = 5
FOLDED_CARDS = 500
T = TypeVar("T")
SUFFIX = {"gc": "", "no gc": ", GC off"}


def engine(rules: RuleSet, batches: list[list[Record]]) -> int:
    """A fresh shard processor over every batch, then every window closed: alerts produced.
    Each batch's alerts are dropped once counted, as the runtime hands them to sinks."""
    processor = ShardProcessor(rules, default_sinks=("sqs",), shard_id=batches[0][0].shard_id)
    alerts = 0
    for batch in batches:
        result = processor.process(batch)
        alerts += len(result.alerts)
        if result.dead_letters:
            raise AssertionError(f"dead letters: {result.dead_letters[:3]}")
    return alerts + len(processor.flush_windows())


def rounds(benchmark: Any, function: Callable[..., T], *args: Any) -> T:
    """``ROUNDS`` timed calls of ``function(*args)``, each after a full collection (untimed).

    Otherwise a round pays for collecting what the round before left, and inherits the
    collector's state from it (how many objects survived the last full collection decides how
    soon the next one comes). From a collected heap, every round of both sides starts alike.
    The engine's figure still moves by about 5% from one run of the same code to the next."""

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        gc.collect()
        return args, {}

    result: T = benchmark.pedantic(function, setup=setup, rounds=ROUNDS, iterations=1)
    return result


@contextmanager
def collector(mode: str) -> Iterator[None]:
    """``gc``: as in production. ``no gc``: the cost of the code alone (collections off)."""
    if mode == "gc":
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_decode_only(benchmark: Any, records: list[Record]) -> None:
    loads = orjson.loads

    def run() -> int:
        cards = 0
        for record in records:
            cards += loads(record.data)["card_id"] is not None
        return cards

    assert rounds(benchmark, run) == len(records)
    report(benchmark, "decode only (orjson, the floor)", len(records))


@pytest.mark.parametrize("mode", ["gc", "no gc"])
def test_seed_rules_hand_written_loop(
    benchmark: Any, batches: list[list[Record]], mode: str
) -> None:
    count = sum(map(len, batches))
    with collector(mode):
        alerts, peak = peak_memory(lambda: handloop.count(batches))
        timed = rounds(benchmark, handloop.count, batches)
    assert timed == alerts > 0
    report(
        benchmark,
        HAND_LOOP + SUFFIX[mode],
        count,
        peak_bytes=peak,
        note=f"{alerts:,} alerts",
        baseline=HAND_LOOP + SUFFIX[mode],
    )


@pytest.mark.parametrize("mode", ["gc", "no gc"])
def test_seed_rules_engine(benchmark: Any, batches: list[list[Record]], mode: str) -> None:
    """The same three rules through ShardProcessor; first checked against the hand loop:
    the same alerts (ids, fields), each once."""
    rules = load_rules([SEED])
    count = sum(map(len, batches))
    keys = _same_alerts(rules, batches, handloop.run(batches))
    with collector(mode):
        alerts, peak = peak_memory(lambda: engine(rules, batches))
        assert rounds(benchmark, engine, rules, batches) == alerts
    report(
        benchmark,
        "seed rules: engine" + SUFFIX[mode],
        count,
        peak_bytes=peak,
        note=f"{alerts:,} alerts; {keys['card_velocity']:,} cards, {keys['low_stock']:,} products",
        baseline=HAND_LOOP + SUFFIX[mode],
    )


# rule set -> (rules file, hand loop, row name)
PAIRED = {
    "seed": (SEED, handloop, "seed rules: engine, paired with the hand loop"),
    "twenty": (TWENTY, handloop_twenty, "20 rules: engine, paired with its hand loop"),
}


@pytest.mark.parametrize("rule_set", list(PAIRED))
def test_engine_paired_with_the_hand_loop(
    benchmark: Any, batches: list[list[Record]], rule_set: str
) -> None:
    """The engine's ratio to the hand loop of the same rules, robust to a machine whose speed
    drifts from one minute to the next (this one's does, by up to a third): ``PAIRED_ROUNDS``
    pairs, each the hand loop then the engine back to back from a collected heap, GC as in
    production; the ratio is the median of the pairs' ratios. The unpaired rows time each side
    in its own rounds, minutes apart, so their ratio also holds how the machine changed in
    between."""
    path, hand_loop, name = PAIRED[rule_set]
    rules = load_rules([path])
    count = sum(map(len, batches))
    hand: list[float] = []
    hand_alerts: list[int] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        gc.collect()
        started = time.perf_counter()
        hand_alerts.append(hand_loop.count(batches))
        hand.append(time.perf_counter() - started)
        gc.collect()
        return (rules, batches), {}

    alerts = benchmark.pedantic(engine, setup=setup, rounds=PAIRED_ROUNDS, iterations=1)
    assert alerts == hand_alerts[-1] > 0  # (the unpaired engine rows compare them one by one)
    engine_s = benchmark.stats.stats.data
    ratios = sorted(e / h for e, h in zip(engine_s, hand, strict=True))
    report(
        benchmark,
        name,
        count,
        seconds=statistics.median(engine_s),
        note=(
            f"median of {len(ratios)} pairs; ratios {ratios[0]:.2f}-{ratios[-1]:.2f}; "
            f"hand loop {statistics.median(hand) / count * 1e6:.3f} us/record"
        ),
        ratio=statistics.median(ratios),
    )


@pytest.fixture(scope="module")
def folded_batches(batches: list[list[Record]]) -> list[list[Record]]:
    """The same records with their card ids folded onto ``FOLDED_CARDS`` cards (card-000000 to
    card-000499), everything else unchanged: the twenty rules' per-key state then fits in the
    CPU caches, so the difference to the 20-rule row is what fetching it from memory costs."""
    loads, dumps = orjson.loads, orjson.dumps
    folded = []
    for batch in batches:
        out = []
        for record in batch:
            doc = loads(record.data)
            doc["card_id"] = f"card-{int(doc['card_id'][5:]) % FOLDED_CARDS:06d}"
            out.append(dataclasses.replace(record, data=dumps(doc)))
        folded.append(out)
    gc.collect()
    gc.freeze()  # the benchmark's data, like the other batches (conftest)
    return folded


def test_twenty_rules_hand_written_loop(benchmark: Any, batches: list[list[Record]]) -> None:
    """The twenty rules by hand (benchmarks/handloop_twenty.py): the 20-rule row's yardstick."""
    count = sum(map(len, batches))
    alerts, peak = peak_memory(lambda: handloop_twenty.count(batches))
    assert rounds(benchmark, handloop_twenty.count, batches) == alerts > 0
    report(
        benchmark,
        HAND_LOOP_TWENTY,
        count,
        peak_bytes=peak,
        note=f"{alerts:,} alerts",
        baseline=HAND_LOOP_TWENTY,
    )


@pytest.mark.parametrize("subset", ["14 conditions", "20 rules", f"20 rules, {FOLDED_CARDS} cards"])
def test_twenty_rules_engine(
    benchmark: Any, batches: list[list[Record]], subset: str, request: pytest.FixtureRequest
) -> None:
    """Fourteen conditions and six windows of every kind (benchmarks/rulesets/twenty.py); the
    last subset runs all twenty over the records with their cards folded onto 500. All twenty
    over the data set are first checked against the hand loop: the same alerts (ids, fields),
    each once."""
    rules = load_rules([TWENTY])
    if subset == "14 conditions":
        rules = RuleSet(rules.rules)
    elif subset != "20 rules":
        batches = request.getfixturevalue("folded_batches")
    else:
        _same_alerts(rules, batches, handloop_twenty.run(batches))
    count = sum(map(len, batches))
    alerts, peak = peak_memory(lambda: engine(rules, batches))
    assert rounds(benchmark, engine, rules, batches) == alerts
    report(
        benchmark,
        f"{subset}: engine",
        count,
        peak_bytes=peak,
        note=f"{alerts:,} alerts",
        compare=subset == "20 rules",
        baseline=HAND_LOOP_TWENTY,
    )


def _same_alerts(
    rules: RuleSet, batches: list[list[Record]], theirs: list[tuple[str, str, dict[str, Any]]]
) -> dict[str, int]:
    """Check that the engine's alerts over ``batches`` (every window closed at the end) are
    ``theirs``: the same ids, each once, with the same fields. Returns the keys each rule held
    before the windows closed."""
    processor = ShardProcessor(rules, default_sinks=("sqs",), shard_id=batches[0][0].shard_id)
    mine = [
        (a.rule, a.alert_id, dict(a.fields))
        for batch in batches
        for a in processor.process(batch).alerts
    ]
    keys = dict(processor.state_keys())
    mine += [(a.rule, a.alert_id, dict(a.fields)) for a in processor.flush_windows()]
    ids = Counter((rule, alert_id) for rule, alert_id, _ in mine)
    assert ids == Counter((rule, alert_id) for rule, alert_id, _ in theirs), (
        f"engine only: {sorted(ids - Counter((r, a) for r, a, _ in theirs))[:3]}"
    )
    assert max(ids.values()) == 1
    assert sorted(mine, key=_ID) == sorted(theirs, key=_ID)
    return keys


def _ID(alert: tuple[str, str, dict[str, Any]]) -> tuple[str, str]:
    return alert[0], alert[1]
