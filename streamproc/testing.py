"""Helpers for rule authors' tests: events in, alerts out, in a few lines.

    from streamproc.testing import run_rules

    def test_velocity_fires_at_the_sixth_transaction():
        events = [tx(card_id="c1", minute=m) for m in range(8)]
        alerts = run_rules("rules/velocity.py", events)
        assert [a["fields"]["n"] for a in alerts if a["rule"] == "card_velocity"] == [6]

Events are dicts (or JSON strings/bytes); they run as one shard in order, with event time from
the records and every window closed at the end (see :mod:`streamproc.replay`). The result is a
list of alert payloads (the JSON every sink receives, minus the stream position).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from streamproc.replay import alert_line, replay
from streamproc.ruleset import Rule, RuleSet, load_rules
from streamproc.windowspec import WindowRule

RuleSource = str | Path | Rule | WindowRule | RuleSet | Sequence[Rule | WindowRule]


def rule_set(rules: RuleSource) -> RuleSet:
    """A RuleSet from a path, a rule, a list of rules, or a RuleSet."""
    if isinstance(rules, RuleSet):
        return rules
    if isinstance(rules, str | Path):
        return load_rules([rules])
    items = [rules] if isinstance(rules, Rule | WindowRule) else list(rules)
    return RuleSet(
        tuple(r for r in items if isinstance(r, Rule)),
        window_rules=tuple(r for r in items if isinstance(r, WindowRule)),
    )


def run_rules(
    rules: RuleSource,
    events: Iterable[Mapping[str, Any] | str | bytes],
    *,
    identity_field: str = "tx_id",
    allow_refused: bool = False,
) -> list[dict[str, Any]]:
    """Run ``rules`` over ``events``; return the alerts as payload dicts, in emission order.

    Events the rules refuse (invalid JSON, a missing field a rule needs, late events) raise
    AssertionError with the reasons, unless ``allow_refused``: a rule test should not pass
    silently over data the rules refused.
    """
    lines = (_line(e) for e in events)
    result = replay(rule_set(rules), lines, identity_field=identity_field)
    if result.dead_letters and not allow_refused:
        reasons = "; ".join(f"line {d.sequence_number}: {d.reason}" for d in result.dead_letters)
        raise AssertionError(f"{len(result.dead_letters)} event(s) refused: {reasons}")
    return [orjson.loads(alert_line(a)) for a in result.alerts]


def _line(event: Mapping[str, Any] | str | bytes) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode()
    return orjson.dumps(dict(event))
