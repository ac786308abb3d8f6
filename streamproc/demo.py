"""A seeded generator of realistic card transactions, and a producer that writes them to Kinesis.

The same seed always gives the same transactions (ids, amounts, times), so tests and demos can
compute the expected alerts in advance. Fields: ``tx_id``, ``card_id``, ``amount``, ``currency``,
``merchant``, ``state``, ``home_state``, ``store_id``, ``product_id``, ``quantity`` (negative for
a sale, positive for a restock) and ``event_time`` (ISO-8601 UTC).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streamproc.errors import TransportError

log = logging.getLogger(__name__)

STATES = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
    "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ",
    "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT",
    "VA", "WA", "WV", "WI", "WY",
)  # fmt: skip
MERCHANTS = (
    "Corner Grocery", "FuelMax", "Bookly", "CloudCompute", "Jet Travel", "Luxe Watches",
    "Pharma Plus", "Bistro 21", "ElectroHub", "Garden World", "PetPals", "StreamFlix",
)  # fmt: skip


@dataclass(frozen=True)
class DemoSpec:
    seed: int = 42
    cards: int = 50_000
    stores: int = 50
    products: int = 200
    high_value_share: float = 0.02  # share of amounts over 2000
    out_of_state_share: float = 0.05
    # share of "card used far from home for a large amount" fraud patterns on top of the above
    fraud_share: float = 0.01
    # share of records that start a burst: one card used 6 to 9 times in a row (card testing)
    burst_share: float = 0.001
    restock_share: float = 0.05
    events_per_second: float = 500.0  # event-time spacing, not the producer's send rate
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)


def transactions(spec: DemoSpec = DemoSpec(), count: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield ``count`` transactions (forever if None), deterministic for ``spec``."""
    for tx, _is_fraud in labelled_transactions(spec, count):
        yield tx


def labelled_transactions(
    spec: DemoSpec = DemoSpec(), count: int | None = None
) -> Iterator[tuple[dict[str, Any], bool]]:
    """Yield ``(transaction, is_fraud)``: the same transactions as :func:`transactions`.

    ``is_fraud`` is true for the generator's fraud patterns: a large amount far from home at a
    merchant the card has not used ("<merchant> Online NN"), and every record of a card-testing
    burst. Training data for fraud-score models (``tools/train_fraud_model.py``).
    """
    rng = random.Random(spec.seed)  # noqa: S311 - reproducible test data, not cryptography
    home = [rng.choice(STATES) for _ in range(spec.cards)]
    step = timedelta(seconds=1 / spec.events_per_second)
    n = 0
    burst_card, burst_left = 0, 0
    while count is None or n < count:
        in_burst = True
        if burst_left:
            card, burst_left = burst_card, burst_left - 1
        elif rng.random() < spec.burst_share:
            burst_card, burst_left = rng.randrange(spec.cards), rng.randint(5, 8)
            card = burst_card
        else:
            card, in_burst = rng.randrange(spec.cards), False
        fraud = rng.random() < spec.fraud_share
        if in_burst:  # bursts spend fast: most add up to more than 10,000
            amount = round(rng.uniform(900.0, 1999.99), 2)
        elif fraud or rng.random() < spec.high_value_share:
            amount = round(rng.uniform(2000.01, 9500.0), 2)
        else:
            amount = round(min(rng.lognormvariate(3.6, 0.9), 1999.99), 2)
        state = home[card]
        if fraud or rng.random() < spec.out_of_state_share:
            state = rng.choice([s for s in STATES if s != home[card]])
        restock = rng.random() < spec.restock_share
        quantity = rng.randint(20, 100) if restock else -rng.randint(1, 5)
        merchant = rng.choice(MERCHANTS)
        if fraud and not in_burst:
            # A merchant the card has never used, derived from n so the rng sequence (and with
            # it every other field of this and later records) is the same as without fraud.
            merchant = f"{merchant} Online {n % 97:02d}"
        tx = {
            "tx_id": f"tx-{spec.seed}-{n:09d}",
            "card_id": f"card-{card:06d}",
            "amount": amount,
            "currency": "USD",
            "merchant": merchant,
            "state": state,
            "home_state": home[card],
            "store_id": f"store-{rng.randrange(spec.stores):04d}",
            "product_id": f"sku-{rng.randrange(spec.products):05d}",
            "quantity": quantity,
            "event_time": (spec.start + n * step)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        yield tx, fraud or in_burst
        n += 1


def encode(tx: dict[str, Any]) -> tuple[bytes, str]:
    """The record bytes and partition key (the card, so a card's events stay in order)."""
    return orjson.dumps(tx), str(tx.get("card_id", ""))


class Producer:
    """Writes records to a stream with PutRecords, re-sending entries that failed.

    ``rate`` caps records per second (None: as fast as the stream accepts). Entries that a
    PutRecords call reports as failed (throttling) are sent again after a short backoff, so
    nothing is dropped; their order relative to later records of the same key may change.
    """

    def __init__(self, client: Any, stream: str, *, rate: float | None = None) -> None:
        self.client = client
        self.stream = stream
        self.rate = rate
        self.sent = 0

    def send(
        self,
        records: Iterable[tuple[bytes, str]],
        *,
        stop: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        batch: list[dict[str, Any]] = []
        size = 0
        started = time.monotonic()
        for data, key in records:
            if stop is not None and stop.is_set():
                break
            entry = {"Data": data, "PartitionKey": key or "-"}
            entry_size = len(data) + len(key)
            batch_limit = 500 if self.rate is None else max(1, min(500, int(self.rate / 10)))
            if batch and (len(batch) >= batch_limit or size + entry_size > 4_500_000):
                self._put(batch)
                batch, size = [], 0
                if progress is not None:
                    progress(self.sent)
                self._pace(started)
            batch.append(entry)
            size += entry_size
        if batch and not (stop is not None and stop.is_set()):
            self._put(batch)
            if progress is not None:
                progress(self.sent)
        return self.sent

    def _pace(self, started: float) -> None:
        if self.rate is None:
            return
        ahead = self.sent / self.rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)

    def _put(self, entries: list[dict[str, Any]]) -> None:
        delay = 0.05
        for _attempt in range(20):
            try:
                response = self.client.put_records(StreamName=self.stream, Records=entries)
            except Exception as exc:  # network or throttling error: retry the whole call
                log.warning("PutRecords failed, retrying in %.2fs: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            failed = [
                entry
                for entry, result in zip(entries, response["Records"], strict=True)
                if "ErrorCode" in result
            ]
            self.sent += len(entries) - len(failed)
            if not failed:
                return
            entries = failed
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise TransportError(
            f"PutRecords to {self.stream!r} kept failing for {len(entries)} records", retryable=True
        )
