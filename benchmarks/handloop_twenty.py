"""The twenty rules (``benchmarks/rulesets/twenty.py``) written by hand in plain Python.

The yardstick for the 20-rule row, as :mod:`benchmarks.handloop` is for the seed rules: the loop
a competent engineer writes for exactly these rules and this data, with no framework. It
produces the same alerts as the engine — same ids (``make_alert_id`` over the same identities),
same fields — and the benchmark checks that, so neither side can skip work.

It leans on what this data set guarantees and the engine cannot assume: event times never go
back (so a sliding window is a deque, a session only ever grows or ends, and no window needs
lateness, corrections or a replay point), every field is present and well typed. Windows with
``emit="final"`` are closed when the watermark (latest event time minus the rule's lateness)
reaches their end, as the engine does, and the rest at the end of the input (``flush``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streamproc.records import Record, make_alert_id

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
CARD = ("tx_id", "card_id", "amount", "merchant", "state", "home_state")
STORE = ("tx_id", "store_id", "product_id", "quantity")
MINUTE = 60_000

HandAlert = tuple[str, str, dict[str, Any]]  # rule, alert id, fields


def run(batches: Iterable[list[Record]]) -> list[HandAlert]:
    """Every alert of the twenty rules over ``batches`` (one shard's records, in order)."""
    out: list[HandAlert] = []
    for alerts in per_batch(batches):
        out += alerts
    return out


def count(batches: Iterable[list[Record]]) -> int:
    """How many alerts, each batch's dropped once counted: what the engine's benchmark does."""
    return sum(len(alerts) for alerts in per_batch(batches))


def _condition(alerts: list[HandAlert], name: str, identity: str, tx: dict[str, Any]) -> None:
    select = STORE if name in ("big_restock", "store_zero") else CARD
    fields = {field: tx[field] for field in select}
    alerts.append((name, make_alert_id(name, 1, identity), fields))


def per_batch(batches: Iterable[list[Record]]) -> Iterator[list[HandAlert]]:
    """Each batch's alerts, state carried from batch to batch; the last list holds the windows
    still open at the end of the input."""
    loads, dumps = orjson.loads, orjson.dumps
    fromisoformat = datetime.fromisoformat
    shard = ""
    velocity: dict[str, list[Any]] = {}  # card -> [deque of times, HAVING held] (10 min)
    burst: dict[str, list[Any]] = {}  # card -> [deque of times, HAVING held] (1 min)
    hourly: dict[int, dict[str, list[Any]]] = {}  # hour start -> card -> [total, n]
    hopping: dict[int, dict[str, list[Any]]] = {}  # 10-minute start -> card -> [merchants, fired]
    rush: dict[int, dict[str, int]] = {}  # minute start -> store -> sales
    sessions: dict[str, list[Any]] = {}  # card -> [first, last, n, total]
    latest = None  # greatest event time so far
    rush_next: int | None = None  # the start of the next store_rush window to close

    def key_of(value: str) -> str:
        return dumps([value]).decode()

    def window_alert(
        name: str, key: str, start: int, end: int, fields: dict[str, Any]
    ) -> HandAlert:
        identity = f"shard={shard}|key={key_of(key)}|window={start}-{end}"
        return (name, make_alert_id(name, 1, identity), fields)

    def close_hourly(watermark: float, out: list[HandAlert]) -> None:
        for start in sorted(start for start in hourly if start + 3_600_000 <= watermark):
            for card, (total, n) in hourly.pop(start).items():
                if total > 10_000:
                    fields = {"card_id": card, "total": total, "n": n}
                    out.append(window_alert("hourly_spend", card, start, start + 3_600_000, fields))

    def close_rush(watermark: float, out: list[HandAlert]) -> None:
        # HOP 1 minute over 5: the window [start, start + 5 min) is its five minute panes, and
        # the windows close in order of start, from the first that holds the first pane.
        nonlocal rush_next
        if not rush:
            return
        if rush_next is None:
            rush_next = min(rush) - 4 * MINUTE
        while rush and rush_next + 5 * MINUTE <= watermark:
            start = rush_next
            sales: dict[str, int] = {}
            for pane in range(start, start + 5 * MINUTE, MINUTE):
                for store, n in rush.get(pane, {}).items():
                    sales[store] = sales.get(store, 0) + n
            for store, n in sales.items():
                if n > 2000:
                    fields = {"store_id": store, "sales": n}
                    out.append(window_alert("store_rush", store, start, start + 5 * MINUTE, fields))
            rush.pop(start, None)  # no later window holds this pane
            rush_next = start + MINUTE

    def close_session(card: str, out: list[HandAlert]) -> None:
        first, last, n, total = sessions.pop(card)
        if n >= 10 and total > 5000:
            fields = {"card_id": card, "n": n, "total": total}
            out.append(window_alert("card_session", card, first, last + 300_000, fields))

    for batch in batches:
        alerts: list[HandAlert] = []
        for record in batch:
            shard = record.shard_id
            tx = loads(record.data)
            identity = f"tx_id={tx['tx_id']}"
            amount, merchant = tx["amount"], tx["merchant"]
            state, home = tx["state"], tx["home_state"]
            quantity = tx["quantity"]
            # the fourteen conditions
            if amount > 2000 and state != home:
                _condition(alerts, "high_value_out_of_state", identity, tx)
            if amount >= 9000:
                _condition(alerts, "very_high_value", identity, tx)
            if merchant in ("Luxe Watches", "Jet Travel") and state != home and amount > 500:
                _condition(alerts, "luxury_out_of_state", identity, tx)
            if " Online " in merchant and amount > 1000:
                _condition(alerts, "new_online_merchant", identity, tx)
            if amount >= 500 and amount % 100 == 0:
                _condition(alerts, "round_amount", identity, tx)
            if quantity >= 95:
                _condition(alerts, "big_restock", identity, tx)
            if quantity > 0 and 1500 <= amount <= 2000:
                _condition(alerts, "refund_like", identity, tx)
            if state in ("CA", "OR", "WA") and amount > 5000:
                _condition(alerts, "west_coast_high", identity, tx)
            if merchant == "Pharma Plus" and amount > 800:
                _condition(alerts, "pharmacy_spree", identity, tx)
            if merchant == "FuelMax" and state != home and amount > 150:
                _condition(alerts, "fuel_far_from_home", identity, tx)
            if tx["currency"] != "USD":
                _condition(alerts, "non_usd", identity, tx)
            if tx["store_id"] == "store-0000" and quantity < -4:
                _condition(alerts, "store_zero", identity, tx)
            if amount < 1 and quantity < 0:
                _condition(alerts, "tiny_amount", identity, tx)
            if merchant.lower() == "electrohub" and amount * 2 > 7000:
                _condition(alerts, "electronics_high", identity, tx)

            at = (fromisoformat(tx["event_time"]) - EPOCH) // MS
            card = tx["card_id"]
            # card_velocity: transactions of the card in (at - 10 min, at], edge-triggered
            item = velocity.get(card)
            if item is None:
                item = velocity[card] = [deque(), False]
            times = item[0]
            times.append(at)
            horizon = at - 600_000
            while times[0] <= horizon:
                times.popleft()
            holds = len(times) > 5
            if holds and not item[1]:
                event = f"shard={shard}|key={key_of(card)}|event={identity}"
                fields = {"card_id": card, "n": len(times)}
                alerts.append(("card_velocity", make_alert_id("card_velocity", 1, event), fields))
            item[1] = holds
            # card_burst: the same over 1 minute, at 20 or more
            item = burst.get(card)
            if item is None:
                item = burst[card] = [deque(), False]
            times = item[0]
            times.append(at)
            horizon = at - MINUTE
            while times[0] <= horizon:
                times.popleft()
            holds = len(times) >= 20
            if holds and not item[1]:
                event = f"shard={shard}|key={key_of(card)}|event={identity}"
                fields = {"card_id": card, "n": len(times)}
                alerts.append(("card_burst", make_alert_id("card_burst", 1, event), fields))
            item[1] = holds
            # hourly_spend: SUM and COUNT per card and hour (final)
            panes = hourly.get(start := at - at % 3_600_000)
            if panes is None:
                panes = hourly[start] = {}
            spend = panes.get(card)
            if spend is None:
                panes[card] = [amount, 1]
            else:
                spend[0] += amount
                spend[1] += 1
            # merchant_hopping: distinct merchants per card and 10 minutes (early: once)
            cards = hopping.get(start := at - at % 600_000)
            if cards is None:
                cards = hopping[start] = {}
            seen = cards.get(card)
            if seen is None:
                seen = cards[card] = [set(), False]
            seen[0].add(merchant)
            if not seen[1] and len(seen[0]) >= 8:
                seen[1] = True
                fields = {"card_id": card, "merchants": len(seen[0])}
                end = start + 600_000
                alerts.append(window_alert("merchant_hopping", card, start, end, fields))
            # store_rush: sales (quantity < 0) per store, in minute panes
            if quantity < 0:
                stores = rush.get(start := at - at % MINUTE)
                if stores is None:
                    stores = rush[start] = {}
                store = tx["store_id"]
                stores[store] = stores.get(store, 0) + 1
            # card_session: a 5-minute gap ends a card's session (final)
            session = sessions.get(card)
            if session is not None and at >= session[1] + 300_000:
                close_session(card, alerts)
                session = None
            if session is None:
                sessions[card] = [at, at, 1, amount]
            else:
                session[1] = at
                session[2] += 1
                session[3] += amount
            # event time moved: close what the watermarks passed
            if latest is None or at > latest:
                if latest is None or at // MINUTE != latest // MINUTE:
                    close_hourly(at - MINUTE, alerts)
                    close_rush(at - 30_000, alerts)
                    for stale in [c for c, s in sessions.items() if s[1] + 300_000 <= at - 30_000]:
                        close_session(stale, alerts)
                latest = at
            # merchant_hopping windows are done with once their end passes (nothing more fires)
            if len(hopping) > 1:
                for done in [s for s in hopping if s + 600_000 <= at - 30_000]:
                    del hopping[done]
        yield alerts
    # the end of the input: every window still open closes
    last: list[HandAlert] = []
    close_hourly(float("inf"), last)
    close_rush(float("inf"), last)
    for card in sorted(sessions):
        close_session(card, last)
    yield last
