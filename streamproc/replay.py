"""Run rules over a JSON-lines file as one shard: backtests, rule tests, ``streamproc replay``.

Deterministic: the same rules and the same file always give the same alerts, in the same order,
byte for byte (no wall clock is involved: event time comes from the records, every window is
closed at the end of the file). Line ``n`` (1-based) becomes sequence number ``n`` of shard
``replay``; its arrival time is 0 (rules that window on arrival time see one instant).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from streamproc.processor import DecodeLimits, ShardProcessor
from streamproc.records import Alert, DeadLetter, Record
from streamproc.ruleset import RuleSet

SHARD = "replay"
BATCH = 1_000


@dataclass
class ReplayResult:
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    records: int = 0

    def per_rule(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for alert in self.alerts:
            counts[alert.rule] = counts.get(alert.rule, 0) + 1
        return dict(sorted(counts.items()))


def replay(
    ruleset: RuleSet,
    lines: Iterable[bytes],
    *,
    identity_field: str = "tx_id",
    event_time_field: str = "event_time",
    limits: DecodeLimits | None = None,
) -> ReplayResult:
    """Evaluate ``ruleset`` over ``lines`` (one JSON record each; blank lines are skipped)."""
    processor = ShardProcessor(
        ruleset,
        identity_field=identity_field,
        event_time_field=event_time_field,
        limits=limits,
        default_sinks=("replay",),
        shard_id=SHARD,
    )
    result = ReplayResult()
    batch: list[Record] = []
    for number, line in enumerate(lines, start=1):
        data = line.strip()
        if not data:
            continue
        batch.append(Record(data, "", str(number), 0, 0, SHARD))
        if len(batch) >= BATCH:
            _run(processor, batch, result)
            batch = []
    if batch:
        _run(processor, batch, result)
    result.alerts.extend(processor.flush_windows())
    return result


def _run(processor: ShardProcessor, batch: list[Record], result: ReplayResult) -> None:
    out = processor.process(batch)
    result.records += len(batch)
    result.alerts.extend(out.alerts)
    result.dead_letters.extend(out.dead_letters)


def alert_line(alert: Alert) -> bytes:
    """One alert as a JSON line (sorted keys): the replay output format."""
    payload = alert.payload()
    del payload["source"]  # positions in the file are not part of the alert's meaning
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS) + b"\n"
