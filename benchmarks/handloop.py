"""The yardstick: the seed rules (``benchmarks/rulesets/seed.py``) written by hand in plain Python.

This is the loop a competent engineer writes for exactly these three rules and this data, with
no framework: orjson, dicts and deques, ``datetime.fromisoformat`` for event time. It produces
the same alerts as the engine — same ids (``make_alert_id`` over the same identities), same
payload fields — and the benchmark checks that, so neither side can skip work.

What it does not do, and the engine does: refuse bad records (size, depth, missing or mistyped
fields) to a dead-letter list instead of crashing, accept events up to 30 s out of order,
track where a restart must replay from, snapshot stock for exactly-once across restarts, and
read the rules from files. Those are what the ratio to this loop pays for.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streamproc.records import Record, make_alert_id

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
VELOCITY_RANGE_MS = 600_000  # SLIDING 10 minutes
VELOCITY_COUNT = 5  # HAVING COUNT(*) > 5
THRESHOLD = 20.0
HYSTERESIS = 10.0
INITIAL = 30.0
LEAD_TIME_DAYS = 3.0
RATE_DAYS = 7.0
DAY_MS = 86_400_000
SELECT = ("tx_id", "card_id", "amount", "currency", "merchant", "state", "home_state")

HandAlert = tuple[str, str, dict[str, Any]]  # rule, alert id, fields


def run(batches: Iterable[list[Record]]) -> list[HandAlert]:
    """Every alert of the seed rules over ``batches`` (one shard's records, in order)."""
    out: list[HandAlert] = []
    for alerts in per_batch(batches):
        out += alerts
    return out


def count(batches: Iterable[list[Record]]) -> int:
    """How many alerts, each batch's dropped once counted: what the engine's benchmark does."""
    return sum(len(alerts) for alerts in per_batch(batches))


def per_batch(batches: Iterable[list[Record]]) -> Iterator[list[HandAlert]]:
    """Each batch's alerts, state carried from batch to batch."""
    loads = orjson.loads
    fromisoformat = datetime.fromisoformat
    cards: dict[str, list[Any]] = {}  # card -> [deque of event times, HAVING held]
    stock: dict[tuple[str, str], list[Any]] = {}  # (store, product) -> [qty, armed, rate, at]
    for batch in batches:
        alerts = []
        for record in batch:
            tx = loads(record.data)
            identity = f"tx_id={tx['tx_id']}"
            # high_value_out_of_state
            if tx["amount"] > 2000 and tx["state"] != tx["home_state"]:
                fields = {name: tx[name] for name in SELECT}
                alerts.append(
                    (
                        "high_value_out_of_state",
                        make_alert_id("high_value_out_of_state", 1, identity),
                        fields,
                    )
                )
            at = (fromisoformat(tx["event_time"]) - EPOCH) // MS
            # card_velocity: transactions of the card in (at - 10 min, at], edge-triggered
            card = tx["card_id"]
            state = cards.get(card)
            if state is None:
                state = cards[card] = [deque(), False]
            times = state[0]
            times.append(at)
            horizon = at - VELOCITY_RANGE_MS
            while times[0] <= horizon:
                times.popleft()
            holds = len(times) > VELOCITY_COUNT
            if holds and not state[1]:
                key = orjson.dumps([card]).decode()
                alerts.append(
                    (
                        "card_velocity",
                        make_alert_id(
                            "card_velocity",
                            1,
                            f"shard={record.shard_id}|key={key}|event={identity}",
                        ),
                        {"card_id": card, "n": len(times)},
                    )
                )
            state[1] = holds
            # low_stock: running stock per (store, product), edge-triggered at the threshold
            product = (tx["store_id"], tx["product_id"])
            delta = float(tx["quantity"])
            item = stock.get(product)
            if item is None:
                item = stock[product] = [INITIAL, INITIAL > THRESHOLD, 0.0, None]
            if delta < 0:  # a sale: time-decayed units per day
                if item[3] is not None and at > item[3]:
                    item[2] *= math.exp(-(at - item[3]) / (RATE_DAYS * DAY_MS))
                if item[3] is None or at > item[3]:
                    item[3] = at
                item[2] += -delta / RATE_DAYS
            item[0] += delta
            if item[1] and delta < 0 and item[0] <= THRESHOLD:
                item[1] = False
                quantity = item[0]
                alerts.append(
                    (
                        "low_stock",
                        make_alert_id("low_stock", 1, identity),
                        {
                            "store_id": product[0],
                            "product_id": product[1],
                            "current_quantity": int(quantity)
                            if quantity.is_integer()
                            else quantity,
                            "reorder_threshold": int(THRESHOLD),
                            "suggested_order_quantity": max(
                                0, math.ceil(item[2] * LEAD_TIME_DAYS + THRESHOLD - quantity)
                            ),
                            "daily_sales_rate": round(item[2], 3),
                        },
                    )
                )
            elif not item[1] and item[0] > THRESHOLD + HYSTERESIS:
                item[1] = True
        yield alerts
