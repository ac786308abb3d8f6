"""Window rules inside a shard processor: event time, operators, and window alerts.

One :class:`~streamproc.windows.WindowOperator` per window rule per shard. Records reach them
after decoding; their results become :class:`~streamproc.records.Alert` objects with
deterministic ids (rule, version, key, window — or the triggering record for per-event windows),
so a replayed window gives the same alert id and idempotent sinks absorb it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from streamproc.errors import RecordError
from streamproc.records import Alert, Position, Record, make_alert_id
from streamproc.sql_runtime import field_getter
from streamproc.windows import LateEvent, WindowOperator, WindowResult, parse_event_time
from streamproc.windowspec import Sliding, WindowRule


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with a Z and millisecond precision."""
    text = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


class WindowSet:
    """The window operators of one shard, with what turns their results into alerts."""

    def __init__(self, rules: Sequence[WindowRule], default_sinks: tuple[str, ...]) -> None:
        self.rules = tuple(rules)
        self.operators = [WindowOperator(rule) for rule in self.rules]
        self._time_getters = [
            None if r.time_field is None else field_getter(r.time_field) for r in self.rules
        ]
        self._sinks = [r.sinks or default_sinks for r in self.rules]
        self.late_events = [0] * len(self.rules)

    def on_record(
        self,
        doc: Mapping[str, Any],
        record: Record,
        identity: str,
        alerts: list[Alert] | None,
        rejected: list[tuple[str, str]],
    ) -> None:
        """Feed one decoded record to every operator.

        ``alerts`` is None while restoring state (records already processed by an earlier run):
        results are dropped then. Rejections (missing fields, bad time, late events) are
        appended to ``rejected`` as (rule name, reason) for the caller to dead-letter.
        """
        position = record.position
        for index, operator in enumerate(self.operators):
            rule = self.rules[index]
            getter = self._time_getters[index]
            try:
                event_ms = record.arrival_ms if getter is None else parse_event_time(getter(doc))
                results = operator.on_event(
                    doc, event_time_ms=event_ms, position=position, identity=identity
                )
            except LateEvent as exc:
                self.late_events[index] += 1
                rejected.append((rule.name, exc.reason))
                continue
            except RecordError as exc:
                rejected.append((rule.name, f"{exc.reason} (rule {rule.name!r})"))
                continue
            if alerts is not None and results:
                self.add_alerts(index, results, record.shard_id, position, alerts)

    def flush(self, shard_id: str, last: Position | None) -> list[Alert]:
        """Close every open window now (idle deadline, end of a replay file)."""
        alerts: list[Alert] = []
        for index, operator in enumerate(self.operators):
            results = operator.flush()
            if results:
                self.add_alerts(index, results, shard_id, last, alerts)
        return alerts

    def holds_state(self) -> bool:
        """Whether any window (or per-event history) is open: something an idle close emits."""
        return any(op.state_size()[1] for op in self.operators)

    def oldest_position(self) -> Position | None:
        """Where a restart must start reading to rebuild this shard's window state."""
        oldest: Position | None = None
        for operator in self.operators:
            held = operator.oldest_position()
            if held is not None and (oldest is None or held < oldest):
                oldest = held
        return oldest

    def add_alerts(
        self,
        index: int,
        results: list[WindowResult],
        shard_id: str,
        fallback: Position | None,
        alerts: list[Alert],
    ) -> None:
        rule = self.rules[index]
        sinks = self._sinks[index]
        per_event = isinstance(rule.window, Sliding)
        for result in results:
            key_fields = dict(zip(rule.group_by, result.key, strict=True))
            key_json = orjson.dumps(list(result.key), option=orjson.OPT_NON_STR_KEYS).decode()
            if per_event:
                identity = f"key={key_json}|event={result.trigger_identity}"
            else:
                identity = f"key={key_json}|window={result.window_start_ms}-{result.window_end_ms}"
            if result.correction:
                identity += f"|correction={result.trigger_identity}"
            where = result.trigger or fallback or Position(0)
            alerts.append(
                Alert(
                    alert_id=make_alert_id(rule.name, rule.version, identity),
                    rule=rule.name,
                    rule_version=rule.version,
                    severity=rule.severity,
                    key="|".join(str(v) for v in result.key) or None,
                    fields=result.values,
                    sinks=sinks,
                    shard_id=shard_id,
                    sequence_number=where.sequence,
                    sub_sequence_number=max(where.sub_sequence_number, 0),
                    event_time=iso(result.event_time_ms),
                    key_fields=key_fields or None,
                    window_start=iso(result.window_start_ms),
                    window_end=iso(result.window_end_ms),
                    correction=result.correction,
                )
            )
