"""Window rules inside a shard processor: event time, operators, and window alerts.

One :class:`~streamproc.windows.WindowOperator` per window rule per shard. Records reach them
after decoding; their results become :class:`~streamproc.records.Alert` objects with
deterministic ids (rule, version, key, window — or the triggering record for per-event windows),
so a replayed window gives the same alert id and idempotent sinks absorb it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from streamproc.errors import RecordError
from streamproc.records import Alert, DeadLetter, Pos, Record, make_alert_id, pos_of
from streamproc.sql_runtime import field_getter
from streamproc.windows import (
    LateEvent,
    WindowOperator,
    WindowResult,
    format_event_time,
    parse_event_time,
)
from streamproc.windowspec import Sliding, WindowRule


class WindowSet:
    """The window operators of one shard, with what turns their results into alerts."""

    def __init__(
        self,
        rules: Sequence[WindowRule],
        default_sinks: tuple[str, ...],
        *,
        max_event_time_skew_ms: int | None = 3_600_000,
    ) -> None:
        self.rules = tuple(rules)
        # An event time far ahead of its arrival time would push the watermark into the future
        # and make every later event late: such records are refused (dead letter) first.
        self.max_skew_ms = max_event_time_skew_ms
        self.operators = [WindowOperator(rule) for rule in self.rules]
        self._sinks = [r.sinks or default_sinks for r in self.rules]
        # What add_alerts needs of each rule: name, version, severity, sinks, whether each
        # result belongs to one event (Sliding), GROUP BY fields.
        self._alerting = [
            (r.name, r.version, r.severity, sinks, isinstance(r.window, Sliding), r.group_by)
            for r, sinks in zip(self.rules, self._sinks, strict=True)
        ]
        # Rules reading the same time field share its parse: consecutive rules of one field
        # form a run, and a record's time is read once per run. Each run: the field's name if
        # it is a top-level one (read directly), its getter (None: arrival time), and per rule
        # (index, name, handler). Most rule sets are one run.
        self.runs: list[tuple[str | None, Any, list[tuple[int, str, Any]]]] = []
        run_field: object = object()  # no field yet
        for index, (rule, operator) in enumerate(zip(self.rules, self.operators, strict=True)):
            field = rule.time_field
            if field != run_field:
                run_field = field
                top = None if field is None or "." in field else field  # read directly
                getter = None if field is None else field_getter(field)
                self.runs.append((top, getter, []))
            self.runs[-1][2].append((index, rule.name, operator.handler()))
        self.late_events = [0] * len(self.rules)
        # Watermarks set by flushes (idle or end-of-shard closes), per rule, and the wall-clock
        # time of the latest close: replaying records cannot reproduce these, so they are
        # checkpointed (RestorePoint) and re-applied after a restart's replay.
        self.closed_through: dict[str, int] = {}
        self.closed_at_ms = 0

    def on_record(
        self,
        doc: Mapping[str, Any],
        record: Record,
        identity: str | None,
        alerts: list[Alert] | None,
        rejected: list[tuple[str, str]],
    ) -> None:
        """Feed one decoded record to every operator: what a restart's replay does (alerts is
        None: results are dropped), and the reference for the steps the shard processor's
        generated loop (:mod:`streamproc.shardloop`) takes for live records.

        Rejections (missing fields, bad time, late events) are appended to ``rejected`` as
        (rule name, reason) for the caller to dead-letter. ``identity`` may be None where no
        alert is made (a replay): event-triggered alerts need it.
        """
        arrival = record.arrival_ms  # 0: not known
        skew = self.max_skew_ms
        for name, getter, run in self.runs:
            try:
                if getter is None:
                    event_ms = arrival
                else:  # a top-level field is read directly; the getter says why one is missing
                    value = None if name is None else doc.get(name)
                    event_ms = parse_event_time(getter(doc) if value is None else value)
                    if skew is not None and arrival and event_ms > arrival + skew:
                        raise self.skewed(event_ms, arrival)
            except RecordError as exc:
                for _, rule_name, _ in run:
                    rejected.append((rule_name, f"{exc.reason} (rule {rule_name!r})"))
                continue
            for index, rule_name, handle in run:
                try:
                    results = handle(doc, event_ms, record, identity)
                except RecordError as exc:
                    rejected.append((rule_name, self._reason(index, exc, alerts is not None)))
                    continue
                if results and alerts is not None:
                    position = pos_of(record)
                    self.add_alerts(
                        index,
                        results,
                        record.shard_id,
                        position,
                        alerts,
                        record.sequence_number,
                        identity,
                    )

    def run_refused(
        self, run: int, exc: RecordError, record: Record, dead: list[DeadLetter]
    ) -> None:
        """The time of ``record`` is bad for the rules of run ``run``: a dead letter each."""
        for _, rule_name, _ in self.runs[run][2]:
            reason = f"{exc.reason} (rule {rule_name!r})"
            dead.append(DeadLetter.of_record(record, reason, rule_name))

    def refused(self, index: int, exc: RecordError, record: Record, dead: list[DeadLetter]) -> None:
        """Rule ``index`` refused ``record`` (a live one): its dead letter."""
        name = self.rules[index].name
        dead.append(DeadLetter.of_record(record, self._reason(index, exc, True), name))

    def _reason(self, index: int, exc: RecordError, live: bool) -> str:
        """Why rule ``index`` refused a record; a late live event is counted."""
        if isinstance(exc, LateEvent):
            if live:  # not while restoring: it was counted the first time
                self.late_events[index] += 1
            return exc.reason
        return f"{exc.reason} (rule {self.rules[index].name!r})"

    def skewed(self, event_ms: int, arrival_ms: int) -> RecordError:
        """Why an event time too far ahead of its record's arrival is refused."""
        return RecordError(
            f"event time {format_event_time(event_ms)} is more than "
            f"{(self.max_skew_ms or 0) // 1000} s ahead of the record's arrival time "
            f"{format_event_time(arrival_ms)}"
        )

    def flush(self, shard_id: str, last: Pos | None) -> list[Alert]:
        """Close every open window now (idle deadline, end of a replay file)."""
        alerts: list[Alert] = []
        for index, operator in enumerate(self.operators):
            results = operator.flush()
            if results:
                self.add_alerts(index, results, shard_id, last, alerts)
            if operator.watermark_ms is not None:
                self.closed_through[self.rules[index].name] = operator.watermark_ms
        self.closed_at_ms = max(self.closed_at_ms + 1, time.time_ns() // 1_000_000)
        return alerts

    def apply_closed_through(self, closed_through: Mapping[str, int], closed_at_ms: int) -> None:
        """After a restart's replay: close what idle/end closes had closed, emitting nothing
        (those alerts were delivered before the checkpoint that recorded the close)."""
        for index, operator in enumerate(self.operators):
            watermark = closed_through.get(self.rules[index].name)
            if watermark is not None:
                operator.advance_to(watermark)  # results dropped on purpose
                self.closed_through[self.rules[index].name] = watermark
        self.closed_at_ms = max(self.closed_at_ms, closed_at_ms)

    def holds_state(self) -> bool:
        """Whether any window (or per-event history) is open: something an idle close emits."""
        return any(op.state_size()[1] for op in self.operators)

    def oldest_position(self) -> Pos | None:
        """Where a restart must start reading to rebuild this shard's window state."""
        oldest: Pos | None = None
        for operator in self.operators:
            held = operator.oldest_position()
            if held is not None and (oldest is None or held < oldest):
                oldest = held
        return oldest

    def add_alerts(
        self,
        index: int,
        results: Sequence[WindowResult],
        shard_id: str,
        fallback: Pos | None,
        alerts: list[Alert],
        fallback_sequence: str | None = None,
        identity: str | None = None,
    ) -> None:
        """Append the alerts of ``results``. ``fallback`` is the position of results without a
        trigger; ``fallback_sequence``, if given, is its sequence number as the stream wrote it
        (results triggered there then reuse the text instead of converting the number back).
        ``identity`` is that record's identity, for results made without it (their handler was
        given None: the shard loop makes a record's identity only once an alert needs it)."""
        name, version, severity, sinks, per_event, group_by = self._alerting[index]
        dumps = orjson.dumps
        for result in results:
            key = result.key
            if len(key) == 1 and key[0].__class__ is str:  # one text: the general forms below
                key_fields: dict[str, Any] | None = {group_by[0]: key[0]}
                key_json = dumps(key).decode()
                key_text: str | None = key[0] or None
            else:
                key_fields = dict(zip(group_by, key, strict=True)) or None
                key_json = dumps(list(key), option=orjson.OPT_NON_STR_KEYS).decode()
                key_text = "|".join(str(v) for v in key) or None
            # Window state is per shard: a key whose records span shards (group-by fields that do
            # not determine the partition key, or a reshard) yields one partial result per
            # shard, and each must keep its own id rather than be taken for a duplicate.
            trigger = result.trigger_identity
            if trigger is None and (per_event or result.correction):
                if identity is None:
                    raise ValueError(f"a result of rule {name!r} has no trigger identity")
                trigger = identity  # made by the record being processed, which has this one
            if per_event:
                text = f"shard={shard_id}|key={key_json}|event={trigger}"
            else:
                window = f"{result.window_start_ms}-{result.window_end_ms}"
                text = f"shard={shard_id}|key={key_json}|window={window}"
            if result.correction:
                text += f"|correction={trigger}"
            where = result.trigger or fallback or (0, 0)
            if fallback_sequence is not None and where == fallback:
                sequence_number = fallback_sequence
            else:
                sequence_number = str(where[0])
            alerts.append(
                Alert(
                    make_alert_id(name, version, text),
                    name,
                    version,
                    severity,
                    key_text,
                    result.values,
                    sinks,
                    shard_id,
                    sequence_number,
                    max(where[1], 0),
                    format_event_time(result.event_time_ms),
                    key_fields,
                    format_event_time(result.window_start_ms),
                    format_event_time(result.window_end_ms),
                    result.correction,
                )
            )
