"""Fraud-score model rules: a model scores every record; a high score is an alert.

Declared in a rule module::

    from streamproc import model_rule

    fraud_score = model_rule(
        name="fraud_score",
        model="models/fraud_gbt.txt",       # relative to the rule module; text/JSON or .onnx
        threshold=0.8,                      # alert when score > threshold
        key="card_id",
        select=["tx_id", "card_id", "amount", "merchant"],
    )

The model file names the features it was trained on; :mod:`streamproc.features` computes them
per record (record fields, plus per-card aggregates over the last 10 minutes / hour). Records
are scored **per batch**: the shard's whole batch goes to the model in one call. Severity comes
from the score (defaults as the bank's alert system does it: > 0.9 CRITICAL, > 0.7 HIGH,
> 0.5 MEDIUM, else LOW; ``severity_thresholds`` changes them). Every alert carries ``score``,
``model`` and ``model_version`` in its fields; severity and rule also go out as SNS/SQS message
attributes, so a subscription can filter on them.

A changed model file is picked up between batches (checked every ``reload_interval_s``): it is
loaded and validated first, and a broken file is refused with an error log while the old model
keeps scoring (``streamproc.models.ModelFile``). The alert id does not depend on the model
version: retraining does not turn replayed alerts into new ones.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamproc.errors import RecordError, RuleCompileError, StreamprocError
from streamproc.features import FeatureState
from streamproc.models import ModelFile
from streamproc.records import (
    SEVERITIES,
    Alert,
    DeadLetter,
    Pos,
    Record,
    Severity,
    make_alert_id,
    pos_of,
    record_identity,
)
from streamproc.sql import Predicate, compile_condition, field_getter
from streamproc.stateful import ShardState, StatefulRuleSpec

DEFAULT_SEVERITIES: Mapping[str, float] = {"CRITICAL": 0.9, "HIGH": 0.7, "MEDIUM": 0.5}

# One model file per path and process, shared by every shard (and reloaded for all of them).
_MODEL_FILES: dict[tuple[str, float], ModelFile] = {}


@dataclass(frozen=True, eq=False)
class ModelRule(StatefulRuleSpec):
    name: str
    version: int
    model_path: str
    threshold: float
    severity_thresholds: tuple[tuple[Severity, float], ...]
    key: str | None
    select: tuple[str, ...]
    sinks: tuple[str, ...]
    description: str
    origin: str
    reload_interval_s: float
    key_field: str
    time_field: str
    model_file: ModelFile = field(repr=False)
    # Instead of ``score > threshold``: an SQL condition over the record and ``score``.
    condition: Predicate | None = field(default=None, repr=False)
    condition_text: str | None = None

    kind = "model"

    def severity(self, score: float) -> Severity:
        for severity, above in self.severity_thresholds:
            if score > above:
                return severity
        return "LOW"

    def build(
        self, shard_id: str, default_sinks: tuple[str, ...], identity_field: str
    ) -> ShardState:
        return _ModelState(self, self.sinks or default_sinks, identity_field)

    def summary(self) -> str:
        model = self.model_file.model
        when = self.condition_text or f"score > {self.threshold}"
        return (
            f"model {model.name} (version {model.version}; {len(model.feature_names)} features: "
            f"{', '.join(model.feature_names)}); alert when {when}"
        )


class _ModelState(ShardState):
    def __init__(self, rule: ModelRule, sinks: tuple[str, ...], identity_field: str) -> None:
        self.rule = rule
        self.sinks = sinks
        self._identity_field = identity_field  # (a record's identity is made for its alert)
        self.features = FeatureState(
            rule.model_file.model.feature_names,
            key_field=rule.key_field,
            time_field=rule.time_field,
        )
        self._rows: list[list[float]] = []
        self._pending: list[tuple[Mapping[str, Any], Record, str | None]] = []
        self._selectors = [(path, field_getter(path)) for path in rule.select]
        self._key = None if rule.key is None else field_getter(rule.key)
        self.scored = 0

    def on_record(
        self,
        doc: Mapping[str, Any],
        record: Record,
        identity: str | None,
        restoring: bool,
    ) -> str | None:
        try:
            row = self.features.observe(doc, pos_of(record), record.arrival_ms)
        except RecordError as exc:
            return f"{exc.reason} (rule {self.rule.name!r})"
        if not restoring:
            self._rows.append(row)
            self._pending.append((doc, record, identity))
        return None

    def end_batch(self, alerts: list[Alert], dead: list[DeadLetter]) -> None:
        if not self._rows:
            self.rule.model_file.maybe_reload()
            return
        rule = self.rule
        model_file = rule.model_file
        model_file.maybe_reload()  # between batches: a changed file is validated, then swapped
        model = model_file.model
        rows, pending = self._rows, self._pending
        self._rows, self._pending = [], []
        scores = model.predict(rows)
        self.scored += len(rows)
        for raw, (doc, record, identity) in zip(scores, pending, strict=True):
            if not math.isfinite(raw):
                reason = f"model {model.name} v{model.version} scored {raw!r} (rule {rule.name!r})"
                dead.append(DeadLetter.of_record(record, reason, rule.name))
                continue
            score = round(raw, 6)  # one value for the threshold, the severity and the payload
            if rule.condition is None:
                if not score > rule.threshold:
                    continue
            else:
                try:
                    if not rule.condition({**doc, "score": score}):
                        continue
                except RecordError as exc:
                    dead.append(
                        DeadLetter.of_record(
                            record, f"{exc.reason} (rule {rule.name!r})", rule.name
                        )
                    )
                    continue
            try:
                key_value = None if self._key is None else self._key(doc)
                fields = {path: get(doc) for path, get in self._selectors}
            except RecordError as exc:
                dead.append(
                    DeadLetter.of_record(record, f"{exc.reason} (rule {rule.name!r})", rule.name)
                )
                continue
            fields["score"] = score
            fields["model"] = model.name
            fields["model_version"] = model.version
            key = None if key_value is None else str(key_value)
            event_time = doc.get(rule.time_field)
            alerts.append(
                Alert(
                    alert_id=make_alert_id(
                        rule.name,
                        rule.version,
                        record_identity(doc, self._identity_field, record)
                        if identity is None
                        else identity,
                    ),
                    rule=rule.name,
                    rule_version=rule.version,
                    severity=rule.severity(score),
                    key=key,
                    fields=fields,
                    sinks=self.sinks,
                    shard_id=record.shard_id,
                    sequence_number=record.sequence_number,
                    sub_sequence_number=record.sub_sequence_number,
                    event_time=event_time if isinstance(event_time, str) else None,
                    key_fields=None if rule.key is None else {rule.key: key_value},
                )
            )

    def oldest_position(self) -> Pos | None:
        return self.features.oldest_position()

    def key_count(self) -> int:
        return self.features.key_count()


def model_rule(
    *,
    name: str,
    model: str,
    threshold: float = 0.8,
    severity_thresholds: Mapping[str, float] | None = None,
    key: str | None = "card_id",
    select: Sequence[str] = (),
    version: int = 1,
    sinks: Sequence[str] = (),
    description: str = "",
    reload_interval_s: float = 5.0,
    key_field: str = "card_id",
    time_field: str = "event_time",
    condition: str | None = None,
) -> ModelRule:
    """Declare a model rule in a rule module (see the module docstring).

    ``model`` is a path relative to the rule module's file (or absolute). The model is loaded
    and validated now: a missing or broken file is a RuleCompileError at this line. ``key_field``
    groups the windowed features (the card); ``key`` is the alert's key. ``condition``, SQL like
    a condition rule's, replaces ``score > threshold``: it reads the record's fields and
    ``score``, e.g. ``"score > 0.8 AND amount > 100"`` or ``"score > 0.6 AND state <> home_state"``.
    """
    caller = sys._getframe(1)
    file, line = caller.f_code.co_filename, caller.f_lineno
    origin = f"{file}:{line}"

    def fail(message: str, hint: str | None = None) -> RuleCompileError:
        return RuleCompileError(
            message, file=file, line=line, rule=name if isinstance(name, str) else None, hint=hint
        )

    if not isinstance(name, str) or not name.replace("_", "a").isalnum() or not name[:1].isalpha():
        raise fail(f"invalid rule name {name!r}", "lower-case letters, digits and '_'")
    if type(version) is not int or version < 1:
        raise fail(f"version must be an integer >= 1, got {version!r}")
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise fail(f"threshold must be a number between 0 and 1, got {threshold!r}")
    levels = dict(DEFAULT_SEVERITIES if severity_thresholds is None else severity_thresholds)
    for severity, above in levels.items():
        if severity not in SEVERITIES or severity == "LOW":
            raise fail(
                f"unknown severity {severity!r} in severity_thresholds",
                "give thresholds for CRITICAL, HIGH and MEDIUM; below them an alert is LOW",
            )
        if not isinstance(above, (int, float)) or not 0.0 <= above <= 1.0:
            raise fail(f"severity threshold for {severity} must be between 0 and 1")
    ordered = tuple(sorted(((s, float(a)) for s, a in levels.items()), key=lambda item: -item[1]))
    for attribute, value in (("select", select), ("sinks", sinks)):
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise fail(f"{attribute} must be a list of strings, got {value!r}")
    try:
        for dotted in (*select, *([key] if key else [])):
            field_getter(dotted)
    except RuleCompileError as error:
        raise fail(error.message, error.hint) from None
    compiled = None
    if condition is not None:
        try:
            compiled = compile_condition(condition, rule=name)
        except RuleCompileError as error:
            raise fail(error.message, error.hint) from None
    path = Path(model)
    if not path.is_absolute():
        path = Path(file).resolve().parent / path
    cache_key = (str(path), float(reload_interval_s))
    model_file = _MODEL_FILES.get(cache_key)
    if model_file is None:
        try:
            model_file = ModelFile(path, check_interval_s=reload_interval_s)
        except StreamprocError as error:
            raise fail(f"cannot load model: {error}", "check the model path and file") from None
        _MODEL_FILES[cache_key] = model_file
    return ModelRule(
        name=name,
        version=version,
        model_path=str(path),
        threshold=float(threshold),
        severity_thresholds=ordered,  # type: ignore[arg-type]
        key=key,
        select=tuple(select),
        sinks=tuple(sinks),
        description=description,
        origin=origin,
        reload_interval_s=float(reload_interval_s),
        key_field=key_field,
        time_field=time_field,
        model_file=model_file,
        condition=None if compiled is None else compiled.fn,
        condition_text=condition,
    )
