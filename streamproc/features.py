"""Per-record model features: the record's own fields plus aggregates of its key's recent events.

A fraud model sees, for each transaction, numbers such as "transactions on this card in the last
10 minutes" or "amount relative to the card's mean over the last hour". :class:`FeatureState`
keeps, per key (the card), the events of the longest look-back window in arrival order and
computes those numbers as of each record's event time, including the record itself.

Features are named; a model file lists the names it was trained on (see
:mod:`streamproc.models`). Built-in windowed features:

===================== ===============================================================
``tx_count_10m``       events of the key with event time in (t - 10 min, t]
``spend_1h``           sum of ``amount`` over (t - 1 h, t]
``distinct_merchants_1h``  distinct ``merchant`` values over (t - 1 h, t]
``amount_vs_mean_1h``  ``amount`` / mean ``amount`` of the key's earlier events in
                       (t - 1 h, t); 1.0 without earlier events
``new_merchant``       1.0 if ``merchant`` did not occur for the key in (t - 1 h, t)
``out_of_state``       1.0 if ``state`` differs from ``home_state``
===================== ===============================================================

Any other name is a record field: numbers as they are, booleans as 0/1; a missing or
non-numeric field is a :class:`~streamproc.errors.MissingFieldError` (the record goes to the
dead-letter destination with the reason). Events older than the longest window behind the
newest event seen are dropped; an event that arrives more than an hour late therefore sees
fewer of its predecessors than it would have in order.

State is rebuilt after a restart by replaying from :meth:`FeatureState.oldest_position`, like
window state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from streamproc.errors import MissingFieldError, RecordError
from streamproc.records import Pos
from streamproc.windows.eventtime import parse_event_time

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

WINDOWED = frozenset(
    {
        "tx_count_10m",
        "spend_1h",
        "distinct_merchants_1h",
        "amount_vs_mean_1h",
        "new_merchant",
    }
)
DERIVED = frozenset({"out_of_state"})
HORIZON_MS = HOUR_MS  # the longest look-back of the windowed features
SWEEP_EVERY = 10_000  # records between sweeps of keys that went quiet

# One remembered event: (event ms, amount, merchant, position).
_Event = tuple[int, float, Any, Pos]


class FeatureState:
    """Windowed per-key state and feature vectors for one shard.

    ``key_field`` groups events (the card); ``time_field`` is their event time. ``names`` are
    the features, in the model's order.
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        key_field: str = "card_id",
        time_field: str = "event_time",
        amount_field: str = "amount",
        merchant_field: str = "merchant",
        max_skew_ms: int | None = 3_600_000,
    ) -> None:
        self.names = tuple(names)
        self.key_field = key_field
        self.time_field = time_field
        self.amount_field = amount_field
        self.merchant_field = merchant_field
        self.max_skew_ms = max_skew_ms
        self.windowed = any(n in WINDOWED for n in self.names)
        self._keys: dict[Any, deque[_Event]] = {}
        self._newest_ms: int | None = None
        self._since_sweep = 0

    def observe(
        self, doc: Mapping[str, Any], position: Pos, arrival_ms: int | None = None
    ) -> list[float]:
        """Add the record to its key's history and return its feature vector.

        With ``arrival_ms``, an event time more than ``max_skew_ms`` ahead of it is refused
        (RecordError): one such record would otherwise push every key's look-back forward and
        evict all history.
        """
        if not self.windowed:
            return [self._plain(doc, name) for name in self.names]
        key = doc.get(self.key_field)
        if key is None or isinstance(key, (dict, list)):
            raise MissingFieldError(self.key_field)
        if self.time_field not in doc:
            raise MissingFieldError(self.time_field)
        now = parse_event_time(doc[self.time_field])
        skew = self.max_skew_ms
        if arrival_ms and skew is not None and now > arrival_ms + skew:  # 0: unknown (replay)
            raise RecordError(
                f"event time {doc[self.time_field]!r} is more than "
                f"{skew // 1000} s ahead of the record's arrival"
            )
        amount = _number(doc, self.amount_field)
        merchant = doc.get(self.merchant_field)
        if self._newest_ms is None or now > self._newest_ms:
            self._newest_ms = now
        events = self._keys.get(key)
        if events is None:
            events = self._keys[key] = deque()
        floor = self._newest_ms - HORIZON_MS
        while events and events[0][0] < floor:
            events.popleft()
        values = self._windowed(events, now, amount, merchant)
        events.append((now, amount, merchant, position))
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:
            self.sweep()
        return [values[name] if name in values else self._plain(doc, name) for name in self.names]

    def _windowed(
        self, events: deque[_Event], now: int, amount: float, merchant: Any
    ) -> dict[str, float]:
        count_10m = 1
        spend = amount
        merchants = {merchant}
        earlier_sum = 0.0
        earlier_n = 0
        seen_merchant = False
        start_10m = now - 10 * MINUTE_MS
        start_1h = now - HOUR_MS
        for t, a, m, _ in events:
            if t > now or t <= start_1h:  # (also skips stale events a sweep has not dropped)
                continue  # later events (this one is late) and older ones are not "recent"
            spend += a
            merchants.add(m)
            earlier_sum += a
            earlier_n += 1
            if m == merchant:
                seen_merchant = True
            if t > start_10m:
                count_10m += 1
        mean = earlier_sum / earlier_n if earlier_n else 0.0
        return {
            "tx_count_10m": float(count_10m),
            "spend_1h": spend,
            "distinct_merchants_1h": float(len(merchants)),
            "amount_vs_mean_1h": amount / mean if mean > 0 else 1.0,
            "new_merchant": 0.0 if seen_merchant else 1.0,
        }

    def _plain(self, doc: Mapping[str, Any], name: str) -> float:
        if name == "out_of_state":
            if "state" not in doc:
                raise MissingFieldError("state")
            if "home_state" not in doc:
                raise MissingFieldError("home_state")
            return 1.0 if doc["state"] != doc["home_state"] else 0.0
        return _number(doc, name)

    def sweep(self) -> None:
        """Drop keys whose events all fell out of the look-back (keys that went quiet)."""
        self._since_sweep = 0
        if self._newest_ms is None:
            return
        floor = self._newest_ms - HORIZON_MS
        quiet = []
        for key, events in self._keys.items():
            while events and events[0][0] < floor:
                events.popleft()
            if not events:
                quiet.append(key)
        for key in quiet:
            del self._keys[key]

    def oldest_position(self) -> Pos | None:
        """The earliest record still held: a restart replays from here (O(keys))."""
        oldest: Pos | None = None
        for events in self._keys.values():
            # Arrival order is position order within a shard: the first is the oldest.
            if events and (oldest is None or events[0][3] < oldest):
                oldest = events[0][3]
        return oldest

    def holds_state(self) -> bool:
        return bool(self._keys)

    def key_count(self) -> int:
        return len(self._keys)


def _number(doc: Mapping[str, Any], name: str) -> float:
    if name not in doc:
        raise MissingFieldError(name)
    value = doc[name]
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    raise RecordError(f"feature {name!r} must be a number or a boolean, got {type(value).__name__}")
