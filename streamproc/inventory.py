"""Inventory threshold rules: running stock per (store, product), one alert per low crossing.

Declared in a rule module::

    from streamproc import inventory_rule

    low_stock = inventory_rule(
        name="low_stock",
        reorder_threshold=20,          # static; or a callable (store, product) -> threshold
        hysteresis=10,                 # re-armed only above threshold + hysteresis
        initial_quantity=100,          # stock before the first event of a product
        lead_time_days=3,
    )

Each record with ``store_id``, ``product_id`` and a signed ``quantity`` (negative: a sale,
positive: a restock) adjusts that product's stock in that store. The rule is edge-triggered: one
alert when the stock crosses to at or below the reorder threshold, not one per sale below it;
it re-arms only after a restock lifts the stock above threshold + hysteresis.

Suggested order quantity (in the alert)::

    daily_rate = units sold per day, an exponentially time-decayed average over ``rate_days``
                 (event time: each sale adds its units, older sales weigh e^(-age/rate_days))
    suggested  = max(0, ceil(daily_rate * lead_time_days) + reorder_threshold - current_quantity)

i.e. enough to cover the sales expected during the supplier's lead time and end at the
threshold again.

The alert goes to EventBridge with source ``inventory.system`` and detail-type ``Low Inventory
Alert``; its detail has ``store_id``, ``product_id``, ``current_quantity``,
``reorder_threshold`` and ``suggested_order_quantity`` at the top level (besides the usual
alert fields).

Stock is cumulative, so unlike windows it cannot be rebuilt by replaying a bounded stretch of
the stream: it is **snapshotted** instead. At every checkpoint the runtime writes the state of
the products that changed, as of the checkpointed record, to the state store, before the
checkpoint itself; a restarted shard loads it and skips, per product, the records the snapshot
already contains. Each crossing is therefore alerted exactly once (with a deterministic alert
id, so a re-sent alert is a no-op at idempotent sinks) across restarts and lease moves. The
stream must be partitioned by store (or store and product): all events of a product must be in
one shard.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from streamproc.errors import RecordError, RuleCompileError
from streamproc.records import (
    SEVERITIES,
    Alert,
    DeadLetter,
    Pos,
    Position,
    Record,
    Severity,
    make_alert_id,
    pos_of,
    record_identity,
)
from streamproc.stateful import RecordHandler, ShardState, StatefulRuleSpec, StateItem
from streamproc.windows.eventtime import parse_event_time

DAY_MS = 86_400_000
MAX_DELTA = 1e12  # a quantity change beyond this is bad data, not stock
SOURCE = "inventory.system"
DETAIL_TYPE = "Low Inventory Alert"

Threshold = Callable[[str, str], float | None]


@dataclass(frozen=True, eq=False)
class InventoryRule(StatefulRuleSpec):
    name: str
    version: int
    reorder_threshold: float | Threshold
    default_threshold: float
    hysteresis: float
    initial_quantity: float
    lead_time_days: float
    rate_days: float
    severity: Severity
    store_field: str
    product_field: str
    quantity_field: str
    time_field: str
    sinks: tuple[str, ...]
    description: str
    origin: str
    stock_sink: str | None = None

    kind = "inventory"
    snapshots = True

    def threshold(self, store: str, product: str) -> float:
        if callable(self.reorder_threshold):
            found = self.reorder_threshold(store, product)
            return self.default_threshold if found is None else float(found)
        return float(self.reorder_threshold)

    def build(
        self, shard_id: str, default_sinks: tuple[str, ...], identity_field: str
    ) -> ShardState:
        return _InventoryState(self, shard_id, self.sinks or default_sinks, identity_field)

    def summary(self) -> str:
        threshold = (
            "per product (table)" if callable(self.reorder_threshold) else self.reorder_threshold
        )
        return (
            f"stock per ({self.store_field}, {self.product_field}); alert at <= {threshold}, "
            f"re-armed above threshold + {self.hysteresis:g}; lead time "
            f"{self.lead_time_days:g} days"
        )


# One product's state: (quantity, armed, rate in units per day decayed to rate_ms, rate_ms).
# An immutable tuple replaced on every change: plain tuples of numbers drop out of the garbage
# collector's tracking, and there is one per product.
_Stock = tuple[float, bool, float, int | None]
_Key = tuple[str, str]
# One processed batch's changes, kept until a snapshot has them: the positions of its first and
# last record that changed a product, and each product it changed with its stock after the batch.
_Batch = tuple[Pos, Pos, tuple[tuple[_Key, _Stock], ...]]


class _InventoryState(ShardState):
    def __init__(
        self, rule: InventoryRule, shard_id: str, sinks: tuple[str, ...], identity_field: str
    ) -> None:
        self.rule = rule
        self.shard_id = shard_id
        self.sinks = sinks
        self.identity_field = identity_field  # (a record's identity is made for its alerts)
        self._stock: dict[_Key, _Stock] = {}
        # Per product: the position up to which a loaded snapshot already counts its records.
        self._as_of: dict[_Key, tuple[str, Position]] = {}
        # What each batch since the last committed snapshot changed (snapshots are taken at
        # batch ends: the runtime checkpoints the end of a processed batch), and what the
        # current batch has changed so far, with its first and latest changing records (their
        # positions are made at the batch's end, not per record).
        self._batches: list[_Batch] = []
        self._changed: dict[_Key, _Stock] = {}
        self._first: Record | None = None
        self._last: Record | None = None
        self._static = None if callable(rule.reorder_threshold) else float(rule.reorder_threshold)
        # A product's first stock when the threshold is static (else per product, on the way).
        self._fresh: _Stock | None = (
            None
            if self._static is None
            else (rule.initial_quantity, rule.initial_quantity > self._static, 0.0, None)
        )
        self._fields = (rule.store_field, rule.product_field, rule.quantity_field, rule.time_field)
        self._decay_ms = rule.rate_days * DAY_MS
        self._rate_days = rule.rate_days
        self._hysteresis = rule.hysteresis
        self._stock_sink = rule.stock_sink
        # Items inherited from parent shards, stored under this shard at the next snapshot so
        # that this shard's own children (a second reshard) inherit them in turn.
        self._inherited: list[StateItem] = []
        self._alerts: list[Alert] = []

    def on_record(
        self,
        doc: Mapping[str, Any],
        record: Record,
        identity: str | None,
        restoring: bool,
    ) -> str | None:
        """One record, through a handler made for the call: the shard processor keeps one
        (:meth:`record_handler`) and calls it per record."""
        return self.record_handler()(doc, record, identity, restoring)

    def record_handler(self) -> RecordHandler:
        """:meth:`on_record`, with the rule's constants bound in a closure: the hot path reads
        them from cells, not from the instance. The caller keeps it; the state does not, or
        state and closure would hold each other and a dropped shard's stock would wait for a
        full collection."""
        rule = self.rule
        name = rule.name
        fields = self._fields
        store_field, product_field, quantity_field, time_field = fields
        stocks = self._stock
        as_of = self._as_of  # (filled in place by load)
        static = self._static
        fresh = self._fresh
        decay_ms = self._decay_ms
        rate_days = self._rate_days
        hysteresis = self._hysteresis
        stock_sink = self._stock_sink
        identity_field = self.identity_field

        def on_record(
            doc: Mapping[str, Any],
            record: Record,
            identity: str | None,
            restoring: bool,
        ) -> str | None:
            # Strings, a whole-number quantity and an event time take the fast path; anything
            # else the checked one (_read), which says what is wrong.
            store = doc.get(store_field)
            product = doc.get(product_field)
            delta = doc.get(quantity_field)
            when = doc.get(time_field)
            try:
                if (
                    store.__class__ is str
                    and product.__class__ is str
                    and delta.__class__ is int
                    and -MAX_DELTA <= delta <= MAX_DELTA
                    and when is not None
                ):
                    at_ms: int | None = parse_event_time(when)
                else:
                    store, product, delta, at_ms = _read(doc, fields)
            except RecordError as exc:
                return None if restoring else f"{exc.reason} (rule {name!r})"
            key = (store, product)
            if as_of:
                done = as_of.get(key)
                if done is not None:
                    if done[0] == record.shard_id and pos_of(record) <= done[1]:
                        return None  # the loaded snapshot already counts this record
                    # A shard's records come in order: none after this one is counted there.
                    del as_of[key]
            threshold = rule.threshold(store, product) if static is None else static
            stock = stocks.get(key)
            if stock is None:
                stock = fresh  # already low at the start: no crossing to report
                if stock is None:
                    initial = rule.initial_quantity
                    stock = (initial, initial > threshold, 0.0, None)
            quantity, armed, rate, rate_ms = stock
            quantity += delta
            if not _isfinite(quantity):
                return None if restoring else f"quantity {delta!r} out of range (rule {name!r})"
            if delta < 0 and at_ms is not None:  # a sale: units per day, exponentially decayed
                if rate_ms is None:
                    rate_ms = at_ms
                elif at_ms > rate_ms:
                    rate *= _exp((rate_ms - at_ms) / decay_ms)
                    rate_ms = at_ms
                rate -= delta / rate_days
            # Only a sale crosses downwards; a restock never raises a low-stock alert.
            if armed and delta < 0 and quantity <= threshold:
                armed = False
                if not restoring:
                    if identity is None:
                        identity = record_identity(doc, identity_field, record)
                    self._alerts.append(
                        self._alert(
                            record, identity, store, product, quantity, rate, threshold, when
                        )
                    )
            elif not armed and quantity > threshold + hysteresis:
                armed = True
            stocks[key] = stock = (quantity, armed, rate, rate_ms)
            changed = self._changed
            if not changed:
                self._first = record
            changed[key] = stock
            self._last = record
            if stock_sink is not None and not restoring:
                if identity is None:
                    identity = record_identity(doc, identity_field, record)
                self._alerts.append(self._stock_update(record, identity, store, product, delta))
            return None

        return on_record

    def _stock_update(
        self, record: Record, identity: str, store: str, product: str, delta: float
    ) -> Alert:
        """One event's quantity change for the inventory table sink (counted once there)."""
        rule = self.rule
        name = f"{rule.name}:stock"
        return Alert(
            # By the event alone: the table counts each event once, whichever rule sent it.
            alert_id=make_alert_id("stock", 1, identity),
            rule=name,
            rule_version=rule.version,
            severity="LOW",
            key=f"{store}/{product}",
            fields={"store_id": store, "product_id": product, "quantity_delta": _plain(delta)},
            sinks=(rule.stock_sink,) if rule.stock_sink else (),
            shard_id=record.shard_id,
            sequence_number=record.sequence_number,
            sub_sequence_number=record.sub_sequence_number,
        )

    def _alert(
        self,
        record: Record,
        identity: str,
        store: str,
        product: str,
        quantity: float,
        daily: float,
        threshold: float,
        when: Any,
    ) -> Alert:
        rule = self.rule
        suggested = max(0, math.ceil(daily * rule.lead_time_days + threshold - quantity))
        fields = {
            "store_id": store,
            "product_id": product,
            "current_quantity": _plain(quantity),
            "reorder_threshold": _plain(threshold),
            "suggested_order_quantity": suggested,
            "daily_sales_rate": round(daily, 3),
        }
        return Alert(
            alert_id=make_alert_id(rule.name, rule.version, identity),
            rule=rule.name,
            rule_version=rule.version,
            severity=rule.severity,
            key=f"{store}/{product}",
            fields=fields,
            sinks=self.sinks,
            shard_id=record.shard_id,
            sequence_number=record.sequence_number,
            sub_sequence_number=record.sub_sequence_number,
            key_fields={rule.store_field: store, rule.product_field: product},
            event_time=when if isinstance(when, str) else None,
            event_source=SOURCE,
            detail_type=DETAIL_TYPE,
            flat_fields=True,
        )

    def end_batch(self, alerts: list[Alert], dead: list[DeadLetter]) -> None:
        alerts.extend(self._alerts)
        self._alerts = []
        if self._changed:  # kept as tuples, which the garbage collector stops tracking
            first, last = self._first, self._last
            assert first is not None and last is not None  # set with the first change
            self._batches.append((pos_of(first), pos_of(last), tuple(self._changed.items())))
            self._changed = {}
            self._first = self._last = None

    def oldest_position(self) -> Pos | None:
        return None  # snapshotted, not replayed

    def key_count(self) -> int:
        return len(self._stock)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, through: Position | None) -> list[StateItem]:
        """Each product changed by the batches that end at or before ``through``, with its stock
        after them; ``through`` must not fall inside a batch (ValueError).

        Every item is stamped with ``through``: its value counts every record of its product up
        to there (a later change of the product is after ``through``), which is what a restart
        skips. At full speed a checkpoint snapshots tens of thousands of products, so the
        changes are merged per batch in C (``dict.update``) and each item is made in one step,
        with one position shared by all."""
        items = list(self._inherited)
        if through is None:
            return items
        latest: dict[_Key, _Stock] = {}
        for first, last, changes in self._batches:  # in record order: the latest change wins
            if last > through:
                if first <= through:
                    raise ValueError(
                        f"cannot snapshot {self.rule.name!r} as of {tuple(through)}: a processed "
                        f"batch changed stock from {first} to {last}; snapshot at a batch end"
                    )
                break
            latest.update(changes)
        if latest:
            name, shard_id, at = self.rule.name, self.shard_id, Position(*through)
            items += [
                StateItem(
                    name,
                    f"{store}\x1f{product}",
                    {"q": quantity, "a": armed, "r": rate, "t": rate_ms},  # JSON, read by load
                    shard_id,
                    at,
                )
                for (store, product), (quantity, armed, rate, rate_ms) in latest.items()
            ]
        return items

    def commit(self, through: Position | None) -> None:
        self._inherited = []
        if through is None:
            return
        batches = self._batches
        del batches[: bisect_right(batches, through, key=_LAST)]

    def load(self, items: list[StateItem]) -> None:
        for item in items:
            if item.rule != self.rule.name:
                continue
            key = _split_key(item.key)
            value = item.value
            self._stock[key] = (float(value["q"]), bool(value["a"]), float(value["r"]), value["t"])
            self._as_of[key] = (item.shard_id, item.position)
            if item.shard_id != self.shard_id:
                self._inherited.append(item)
            else:  # this shard's own item replaces one inherited for the same key
                self._inherited = [i for i in self._inherited if i.key != item.key]


_LAST = itemgetter(1)  # a batch's last changing position


_isfinite = math.isfinite
_exp = math.exp


def _read(
    doc: Mapping[str, Any], fields: tuple[str, str, str, str]
) -> tuple[str, str, float, int | None]:
    """Store, product, quantity change and event time (None: no time field), checked."""
    store_field, product_field, quantity_field, time_field = fields
    store = _text(doc, store_field)
    product = _text(doc, product_field)
    delta = _number(doc, quantity_field)
    if abs(delta) > MAX_DELTA:
        raise RecordError(f"quantity {delta!r} out of range")
    at_ms = parse_event_time(doc[time_field]) if time_field in doc else None
    return store, product, delta, at_ms


def _split_key(text: str) -> tuple[str, str]:
    """(store, product) of a snapshot item's key, ``store\x1fproduct``."""
    store, _, product = text.partition("\x1f")
    return store, product


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _text(doc: Mapping[str, Any], name: str) -> str:
    if name not in doc or doc[name] is None:
        raise RecordError(f"missing field {name!r}")
    value = doc[name]
    if isinstance(value, (dict, list)):
        raise RecordError(f"field {name!r} must be a string or number")
    return str(value)


def _number(doc: Mapping[str, Any], name: str) -> float:
    if name not in doc:
        raise RecordError(f"missing field {name!r}")
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(f"field {name!r} must be a number, got {value!r}")
    return float(value)


def inventory_rule(
    *,
    name: str,
    reorder_threshold: float | Threshold,
    hysteresis: float = 0,
    initial_quantity: float = 0,
    lead_time_days: float = 3,
    rate_days: float = 7,
    default_threshold: float = 0,
    severity: Severity = "HIGH",
    version: int = 1,
    sinks: tuple[str, ...] | list[str] = (),
    description: str = "",
    store_field: str = "store_id",
    product_field: str = "product_id",
    quantity_field: str = "quantity",
    time_field: str = "event_time",
    stock_sink: str | None = None,
) -> InventoryRule:
    """Declare an inventory rule in a rule module (see the module docstring).

    ``reorder_threshold`` is a number, or a callable ``(store, product) -> number | None`` such
    as :class:`streamproc.thresholds.ThresholdTable` (``None``: use ``default_threshold``).
    ``stock_sink="inventory_table"`` also keeps the inventory table's ``current_quantity`` (one
    update per event, counted once: ``connectors.inventory_table``).
    """
    caller = sys._getframe(1)
    file, line = caller.f_code.co_filename, caller.f_lineno

    def fail(message: str) -> RuleCompileError:
        return RuleCompileError(message, file=file, line=line, rule=name)

    if not isinstance(name, str) or not name.replace("_", "a").isalnum() or not name[:1].isalpha():
        raise fail(f"invalid rule name {name!r}")
    if type(version) is not int or version < 1:
        raise fail(f"version must be an integer >= 1, got {version!r}")
    if not callable(reorder_threshold) and not isinstance(reorder_threshold, (int, float)):
        raise fail("reorder_threshold must be a number or a callable (store, product) -> number")
    for label, value, low in (
        ("hysteresis", hysteresis, 0.0),
        ("lead_time_days", lead_time_days, 0.0),
        ("rate_days", rate_days, 1e-9),
    ):
        if not isinstance(value, (int, float)) or value < low:
            raise fail(f"{label} must be a number >= {low:g}, got {value!r}")
    if severity not in SEVERITIES:
        raise fail(f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}")
    if isinstance(sinks, str) or not all(isinstance(s, str) for s in sinks):
        raise fail(f"sinks must be a list of strings, got {sinks!r}")
    return InventoryRule(
        name=name,
        version=version,
        reorder_threshold=reorder_threshold,
        default_threshold=float(default_threshold),
        hysteresis=float(hysteresis),
        initial_quantity=float(initial_quantity),
        lead_time_days=float(lead_time_days),
        rate_days=float(rate_days),
        severity=severity,
        store_field=store_field,
        product_field=product_field,
        quantity_field=quantity_field,
        time_field=time_field,
        sinks=tuple(sinks),
        description=description,
        origin=f"{file}:{line}",
        stock_sink=stock_sink,
    )
