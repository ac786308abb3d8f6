"""The hot path: decode a shard's records, evaluate the rules, produce alerts and dead letters.

Pure and synchronous: no client, no lock, no log call per record. The runtime loop hands a batch
in and routes what comes out. Bad input is data: every record the processor cannot handle comes
back as a :class:`DeadLetter` with the reason, and the records around it are processed normally.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamproc.errors import MissingFieldError, RecordError
from streamproc.interfaces import RestorePoint
from streamproc.records import (
    Alert,
    DeadLetter,
    Position,
    Record,
    make_alert_id,
    pos_of,
    record_identity,
)
from streamproc.ruleset import Condition, Rule, RuleSet
from streamproc.shardloop import LoopShape, ShardLoop, compile_loop
from streamproc.stateful import StateItem
from streamproc.windowing import WindowSet
from streamproc.windows import parse_event_time
from streamproc.windows.fastpaths import inline

log = logging.getLogger(__name__)

#: Whether the shard loop runs the window rules' generated fast paths in place (True) or calls
#: them: the same steps either way; tests compare the two.
INLINE_WINDOW_STEPS = True


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_record_bytes: int = 1_048_576
    max_nesting_depth: int = 32


@dataclass(slots=True)
class ProcessResult:
    """What one batch produced. ``matches[i]`` counts matches of the rule set's i-th rule."""

    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    decoded: int = 0
    restored: int = 0  # records replayed only to rebuild window state


def nesting_depth(value: Any, limit: int | None = None) -> int:
    """Depth of nested objects/arrays: a flat object is 1.

    Iterative (orjson accepts 1,024 levels, more than Python's recursion limit allows) and it
    stops early once ``limit`` is exceeded, returning a depth above ``limit``.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if limit is not None and deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def _decode_or_reason(data: bytes, limits: DecodeLimits) -> dict[str, Any] | str:
    try:
        return decode(data, limits)
    except Exception as exc:  # a decoder failure we did not foresee is still bad data
        return f"cannot decode record: {type(exc).__name__}: {exc}"


def decode(data: bytes, limits: DecodeLimits) -> dict[str, Any] | str:
    """Decode one record. Returns the JSON object, or the reason it was refused.

    Reasons are returned, not raised: a refused record is ordinary data on the error path.
    """
    if len(data) > limits.max_record_bytes:
        return f"record too large: {len(data)} bytes > limit {limits.max_record_bytes}"
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(doc, dict):
        return f"not a JSON object: got {type(doc).__name__}"
    # Counting brackets in C is far cheaper than walking: only documents that could be too deep
    # get walked.
    if data.count(b"{") + data.count(b"[") > limits.max_nesting_depth:
        depth = nesting_depth(doc, limits.max_nesting_depth)
        if depth > limits.max_nesting_depth:
            return f"nesting too deep: depth {depth} > limit {limits.max_nesting_depth}"
    return doc


class ShardProcessor:
    """Evaluates a rule set over the records of one shard.

    ``identity_field`` names the record field that identifies a transaction (e.g. ``tx_id``);
    alert ids derive from rule name, rule version and that identity, so the same record gives the
    same alert id however often it is replayed. Without the field, the record's position in the
    stream (shard, sequence and sub-sequence number) is the identity.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        identity_field: str = "tx_id",
        event_time_field: str = "event_time",
        limits: DecodeLimits | None = None,
        default_sinks: Sequence[str] = (),
        shard_id: str = "",
        max_event_time_skew_ms: int | None = 3_600_000,
    ) -> None:
        self.ruleset = ruleset
        self.shard_id = shard_id
        self.identity_field = identity_field
        self.event_time_field = event_time_field
        self.limits = limits or DecodeLimits()
        self.default_sinks = tuple(default_sinks)
        # Resolve per-rule constants once, so the loop below only does per-record work.
        self._plan = [
            (index, r, r.condition, r.sinks or self.default_sinks)
            for index, r in enumerate(ruleset.rules)
        ]
        self.condition_names = frozenset(r.name for r in ruleset.rules)
        # Every SQL condition in one generated function (None: fewer than two, or a Python one).
        self._fused = ruleset.fused_conditions()
        self.windows = WindowSet(
            ruleset.window_rules,
            self.default_sinks,
            max_event_time_skew_ms=max_event_time_skew_ms,
        )
        # Model and inventory rules: per-shard state, decided at the end of each batch.
        self._stateful = [
            spec.build(shard_id, self.default_sinks, identity_field)
            for spec in ruleset.stateful_rules
        ]
        self._stateful_plan = [
            (spec.name, state.record_handler())
            for spec, state in zip(ruleset.stateful_rules, self._stateful, strict=True)
        ]
        # "Windows" below means any state rebuilt by replay: window rules and stateful rules.
        self._has_windows = bool(ruleset.window_rules) or bool(self._stateful)
        self._loop = self._compile_loop().function
        self.last_position: Position | None = None
        self._restore_until: Position | None = None
        self._restore_point: RestorePoint | None = None

    def begin_restore(self, until: Position, restore: RestorePoint) -> None:
        """Records at or before ``until`` were fully processed by an earlier run: rebuild window
        state from them (no alerts, no dead letters), then re-apply ``restore``'s closes."""
        self._restore_until = until
        self._restore_point = restore

    def restore_point(self) -> RestorePoint | None:
        """What a checkpoint taken now must store to rebuild this shard's window state."""
        if not self._has_windows:
            return None
        windows = self.windows
        return RestorePoint(self.replay_from(), dict(windows.closed_through), windows.closed_at_ms)

    def _finish_restore(self) -> None:
        point = self._restore_point
        if point is not None and self._has_windows:
            self.windows.apply_closed_through(point.closed_through, point.closes)
        self._restore_until = None
        self._restore_point = None

    def process(self, records: Sequence[Record]) -> ProcessResult:
        """Evaluate a batch (see :meth:`begin_restore` for records an earlier run processed).

        The records after any replayed ones go through the processor's generated loop
        (:mod:`streamproc.shardloop`), the hot path (``benchmarks/``).
        """
        result = ProcessResult(matches=[0] * len(self._plan))
        undecodable = 0
        start = 0
        if self._restore_until is not None:
            rejected: list[tuple[str, str]] = []
            for record in records:
                until = self._restore_until
                if until is None:  # the replay's last record came in this batch
                    break
                if record.position > until:
                    self._finish_restore()  # complete (its last record may have been trimmed)
                    break
                if not self._restore(record, result, rejected):
                    undecodable += 1
                start += 1
        live = records[start:] if start else records
        undecodable += self._loop(live, result.alerts, result.dead_letters, result.matches)
        result.decoded = len(records) - result.restored - undecodable
        for state in self._stateful:
            state.end_batch(result.alerts, result.dead_letters)
        if records:
            self.last_position = records[-1].position
        return result

    def _compile_loop(self) -> ShardLoop:
        """This processor's loop (:mod:`streamproc.shardloop`): its steps, and their values."""
        windows = self.windows
        runs = windows.runs
        # Generated window fast paths run in the loop itself, not as calls; others are called.
        inlined: list[tuple[int, str]] = []
        handlers: dict[str, Any] = {}
        for _, _, run in runs:
            for index, _, handle in run:
                form = inline(handle, f"h{index}", "results") if INLINE_WINDOW_STEPS else None
                if form is None:
                    handlers[f"h{index}"] = handle
                else:
                    inlined.append((index, form[0]))
                    handlers.update(form[1])
        shape = LoopShape(
            conditions=len(self._plan),
            fused=self._fused is not None,
            runs=tuple(
                (getter is not None, name is not None, tuple(i for i, _, _ in run))
                for name, getter, run in runs
            ),
            stateful=len(self._stateful),
            skew=windows.max_skew_ms is not None,
            inlined=tuple(inlined),
        )
        limits = self.limits
        # The loop's off-path steps hold what they need, not the processor: the processor holds
        # the loop, and a loop holding the processor would make a cycle, which keeps a dropped
        # shard's state until a full collection.
        steps = _SlowSteps(
            self._plan,
            self.identity_field,
            self.event_time_field,
            tuple(name for name, _ in self._stateful_plan),
        )
        namespace: dict[str, Any] = {
            "loads": orjson.loads,
            "MAX_BYTES": limits.max_record_bytes,
            "MAX_DEPTH": limits.max_nesting_depth,
            "LIMITS": limits,
            "decode_or_reason": _decode_or_reason,
            "dead_letter": DeadLetter.of_record,
            "condition_failed": steps.condition_failed,
            "matched": steps.matched,
            "each_condition": steps.each_condition,
            "fused": self._fused,
            "IDENTITY_FIELD": self.identity_field,
            "identify": record_identity,
            "parse_event_time": parse_event_time,
            "RecordError": RecordError,
            "SKEW": windows.max_skew_ms,
            "skewed": windows.skewed,
            "run_refused": windows.run_refused,
            "window_refused": windows.refused,
            "add_alerts": windows.add_alerts,
            "pos_of": pos_of,
            "stateful_raised": steps.stateful_raised,
        }
        for index, (_, _, condition, _) in enumerate(self._plan):
            namespace[f"c{index}"] = condition
        for r, (name, getter, _) in enumerate(runs):
            namespace[f"T{r}"] = name
            namespace[f"time{r}"] = getter
        namespace.update(handlers)
        for j, (name, on_record) in enumerate(self._stateful_plan):
            namespace[f"s{j}"] = on_record
            namespace[f"S{j}"] = name
        return compile_loop(shape, namespace)

    def loop_source(self) -> str:
        """The source of this processor's loop, after a legend of what its numbered names
        stand for (``streamproc rules loop``)."""
        legend = [f"# c{i}: condition of rule {r.name!r}" for i, r in enumerate(self.ruleset.rules)]
        if self._fused is not None:
            legend.append("# fused: every condition above in one function")
        for r, (_, getter, run) in enumerate(self.windows.runs):
            if getter is None:
                legend.append(f"# run {r}: the arrival time")
            else:
                field = self.windows.rules[run[0][0]].time_field
                legend.append(f"# T{r}, time{r}: time field {field!r}")
            legend += [f"# h{index}: window rule {rule!r}" for index, rule, _ in run]
        legend += [
            f"# s{j}, S{j}: rule {name!r}" for j, (name, _) in enumerate(self._stateful_plan)
        ]
        return "\n".join(legend) + "\n" + self._compile_loop().source

    def _restore(
        self, record: Record, result: ProcessResult, rejected: list[tuple[str, str]]
    ) -> bool:
        """A record an earlier run processed: rebuild window and rule state only. False if it
        cannot be decoded (it was dead-lettered the first time)."""
        doc = _decode_or_reason(record.data, self.limits)
        if isinstance(doc, str):
            if record.position == self._restore_until:
                self._finish_restore()
            return False
        result.restored += 1
        # No identity (None): a replayed record makes no alert, so nothing reads it.
        if self.ruleset.window_rules:
            self.windows.on_record(doc, record, None, None, rejected)
            rejected.clear()
        for _, on_record in self._stateful_plan:
            try:
                on_record(doc, record, None, True)
            except Exception:  # refused when it was first processed: skip it again
                log.debug("rule state refused a replayed record", exc_info=True)
        if record.position == self._restore_until:
            self._finish_restore()
        return True

    def flush_windows(self) -> list[Alert]:
        """Close every open window now: alerts for those whose HAVING holds."""
        shard_id = self.shard_id
        return self.windows.flush(shard_id, self.last_position) if self._has_windows else []

    def replay_from(self) -> Position | None:
        """The oldest record still held in window or rule state (None: none held)."""
        if not self._has_windows:
            return None
        oldest = self.windows.oldest_position()
        for state in self._stateful:
            position = state.oldest_position()
            if position is not None and (oldest is None or position < oldest):
                oldest = position
        return None if oldest is None else Position(*oldest)

    def snapshot(self, through: Position | None) -> list[StateItem]:
        """Snapshot items of the stateful rules as of the settled position ``through``."""
        return [item for state in self._stateful for item in state.snapshot(through)]

    def commit_snapshot(self, through: Position | None) -> None:
        for state in self._stateful:
            state.commit(through)

    def load_state(self, items: list[StateItem]) -> None:
        for state in self._stateful:
            state.load(items)

    def state_keys(self) -> list[tuple[str, int]]:
        """(rule, keys holding state) for every window and stateful rule."""
        windows = self.windows
        out = [
            (r.name, op.state_size()[0])
            for r, op in zip(windows.rules, windows.operators, strict=True)
        ]
        specs = self.ruleset.stateful_rules
        out += [(spec.name, st.key_count()) for spec, st in zip(specs, self._stateful, strict=True)]
        return out

    def holds_window_state(self) -> bool:
        return self._has_windows and self.windows.holds_state()

    @property
    def has_windows(self) -> bool:
        return self._has_windows

    @property
    def restoring(self) -> bool:
        """Records an earlier run processed are being replayed to rebuild state."""
        return self._restore_until is not None


class _SlowSteps:
    """What a shard loop calls off its straight path: a matched condition's alert, a
    condition's or a stateful rule's failure. Holds no reference to the processor."""

    __slots__ = ("event_time_field", "identity_field", "plan", "stateful_names")

    def __init__(
        self,
        plan: list[tuple[int, Rule, Condition, tuple[str, ...]]],
        identity_field: str,
        event_time_field: str,
        stateful_names: tuple[str, ...],
    ) -> None:
        self.plan = plan
        self.identity_field = identity_field
        self.event_time_field = event_time_field
        self.stateful_names = stateful_names

    def condition_failed(
        self, index: int, exc: Exception, record: Record, dead: list[DeadLetter]
    ) -> None:
        """Condition rule ``index`` raised on ``record``: its dead letter says why."""
        name = self.plan[index][1].name
        if isinstance(exc, MissingFieldError):
            reason = f"{exc.reason} (rule {name!r})"
        else:  # a rule's Python code failed: data for the DLQ
            reason = f"rule {name!r} raised {type(exc).__name__}: {exc}"
        dead.append(DeadLetter.of_record(record, reason, name))

    def each_condition(
        self,
        doc: dict[str, Any],
        record: Record,
        identity: str | None,
        alerts: list[Alert],
        dead: list[DeadLetter],
        matches: list[int],
    ) -> str | None:
        """Every condition on its own (the fused function raised): matches and dead letters."""
        for index, _, condition, _ in self.plan:
            try:
                hit = condition(doc)
            except Exception as exc:
                self.condition_failed(index, exc, record, dead)
                continue
            if hit:
                identity = self.matched(index, doc, record, identity, alerts, dead, matches)
        return identity

    def matched(
        self,
        index: int,
        doc: dict[str, Any],
        record: Record,
        identity: str | None,
        alerts: list[Alert],
        dead: list[DeadLetter],
        matches: list[int],
    ) -> str | None:
        """Condition rule ``index`` holds for ``doc``: its alert (or the dead letter saying why
        its fields cannot be read). Returns the record's identity once it was needed."""
        _, rule, _, sinks = self.plan[index]
        try:
            key, fields = rule.extract(doc)
        except Exception as exc:
            self.condition_failed(index, exc, record, dead)
            return identity
        matches[index] += 1
        if identity is None:
            identity = record_identity(doc, self.identity_field, record)
        event_time = doc.get(self.event_time_field)
        alerts.append(
            Alert(
                alert_id=make_alert_id(rule.name, rule.version, identity),
                rule=rule.name,
                rule_version=rule.version,
                severity=rule.severity,
                key=key,
                fields=fields,
                sinks=sinks,
                shard_id=record.shard_id,
                sequence_number=record.sequence_number,
                sub_sequence_number=record.sub_sequence_number,
                event_time=event_time if isinstance(event_time, str) else None,
                key_fields=None if key is None or rule.key is None else {rule.key: key},
            )
        )
        return identity

    def stateful_raised(self, index: int, exc: Exception) -> str:
        """Why stateful rule ``index`` refused a record it raised on."""
        return f"rule {self.stateful_names[index]!r} raised {type(exc).__name__}: {exc}"
