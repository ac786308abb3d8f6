"""The benchmark data set: seeded synthetic transactions, generated once and cached on disk.

1,000,000 records by default (``STREAMPROC_BENCH_RECORDS`` overrides it for a quicker run):
50,000 cards, 500 stores, 2,000 products, about 2% of amounts over 2000, about 5% out of the
card's home state, event time advancing 10,000 records per second (100 s of event time in all).
The generator is :mod:`streamproc.demo`, so the same seed always gives the same bytes; the
file is ``.cache/bench/<name>.jsonl`` (one JSON object per line) and is rebuilt only when the
spec or the count changes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import orjson

from streamproc.demo import DemoSpec, encode, transactions
from streamproc.records import Record
from streamproc.windows.eventtime import parse_event_time

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
SHARD = "shardId-000000000000"
# A Kinesis sequence number is a 56-digit decimal (the engine reads it as an integer for every
# record it keeps a position of): the records get consecutive ones from here, as from a stream.
FIRST_SEQUENCE = 49_659_412_771_049_025_660_855_969_253_836_157_109_592_157_598_913_658_900

SPEC = DemoSpec(
    seed=2026,
    cards=50_000,
    stores=500,
    products=2_000,
    high_value_share=0.01,  # plus fraud_share (always over 2000): ~2% in all
    out_of_state_share=0.04,  # plus fraud_share (always out of state): ~5% in all
    fraud_share=0.01,
    events_per_second=10_000.0,
)
START_MS = int(SPEC.start.timestamp() * 1000)


def record_count() -> int:
    text = os.environ.get("STREAMPROC_BENCH_RECORDS", "1000000")
    try:
        count = int(text.replace("_", ""))
    except ValueError:
        raise SystemExit(f"STREAMPROC_BENCH_RECORDS must be a whole number, not {text!r}") from None
    if count < 1_000:
        raise SystemExit(f"STREAMPROC_BENCH_RECORDS must be at least 1000, not {count}")
    return count


def cache_file(count: int) -> Path:
    digest = hashlib.sha256(orjson.dumps(asdict(SPEC), default=str)).hexdigest()[:12]
    return CACHE / f"transactions-{digest}-{count}.jsonl"


def lines(count: int) -> list[bytes]:
    """The encoded records (JSON bytes), from the cache or generated and cached now."""
    path = cache_file(count)
    if not path.exists():
        started = time.monotonic()
        print(f"\ngenerating {count:,} benchmark records into {path} (once)...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with partial.open("wb") as out:
            for tx in transactions(SPEC, count):
                out.write(encode(tx)[0] + b"\n")
        partial.replace(path)  # atomic: a killed run leaves no half file behind
        print(f"generated in {time.monotonic() - started:.1f} s", flush=True)
    data = path.read_bytes().split(b"\n")
    if data and not data[-1]:
        data.pop()
    if len(data) != count:
        path.unlink()
        raise RuntimeError(f"{path} held {len(data)} records, not {count}: deleted, run again")
    return data


def records(count: int) -> list[Record]:
    """One shard's records, in order, with Kinesis-shaped sequence numbers and arrival times that
    match their event times."""
    out = []
    for n, data in enumerate(lines(count)):
        # Partition key: the card, as demo.encode sets it; not read by the processor.
        out.append(Record(data, "", str(FIRST_SEQUENCE + n), 0, START_MS + n // 10, SHARD))
    return out


def batches(items: list[Record], size: int) -> Iterator[list[Record]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def describe(items: list[Record]) -> dict[str, float]:
    """The data set's shape, measured (printed in the summary so the claims above are checked)."""
    cards, stores, products = set(), set(), set()
    high = away = 0
    first = last = ""
    for record in items:
        tx = orjson.loads(record.data)
        cards.add(tx["card_id"])
        stores.add(tx["store_id"])
        products.add(tx["product_id"])
        high += tx["amount"] > 2000
        away += tx["state"] != tx["home_state"]
        last = tx["event_time"]
        first = first or last
    span_s = (parse_event_time(last) - parse_event_time(first)) / 1000
    return {
        "records": len(items),
        "cards": len(cards),
        "stores": len(stores),
        "products": len(products),
        "over_2000_pct": 100 * high / len(items),
        "out_of_state_pct": 100 * away / len(items),
        "records_per_event_second": len(items) / span_s if span_s else 0.0,
    }
