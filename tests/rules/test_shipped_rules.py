"""The rules shipped in rules/, tested the way a rule author tests theirs (streamproc.testing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from streamproc.testing import run_rules

RULES = Path(__file__).resolve().parents[2] / "rules"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def tx(
    n: int, *, card: str = "card-1", at: timedelta, amount: float = 20.0, **extra: Any
) -> dict[str, Any]:
    event = {
        "tx_id": f"tx-{n}", "card_id": card, "amount": amount, "currency": "USD",
        "merchant": "Bookly", "state": "CA", "home_state": "CA", "store_id": "store-1",
        "product_id": "sku-1", "quantity": -1,
        "event_time": (T0 + at).isoformat().replace("+00:00", "Z"),
    }  # fmt: skip
    event.update(extra)
    return event


def test_high_value_out_of_state() -> None:
    events = [
        tx(1, at=timedelta(0), amount=2500, state="NY"),
        tx(2, at=timedelta(seconds=1), amount=2500),  # in its home state
        tx(3, at=timedelta(seconds=2), amount=2000, state="NY"),  # not more than 2000
    ]
    alerts = run_rules(RULES / "fraud.py", events)
    assert [(a["rule"], a["fields"]["tx_id"]) for a in alerts] == [
        ("high_value_out_of_state", "tx-1")
    ]
    assert alerts[0]["key"] == {"card_id": "card-1"}
    assert alerts[0]["severity"] == "HIGH"


def test_card_velocity_fires_once_at_the_sixth_transaction_in_ten_minutes() -> None:
    burst = [tx(n, at=timedelta(minutes=n)) for n in range(8)]  # 8 in 7 minutes
    other = [tx(100 + n, card="card-2", at=timedelta(minutes=3 * n)) for n in range(8)]
    alerts = [
        a
        for a in run_rules(
            RULES / "velocity.py", sorted(burst + other, key=lambda e: e["event_time"])
        )
        if a["rule"] == "card_velocity"
    ]
    assert len(alerts) == 1  # card-2's 8 transactions span 21 minutes: never 6 in 10
    (alert,) = alerts
    assert alert["key"] == {"card_id": "card-1"}
    assert alert["fields"]["n"] == 6
    assert alert["event_time"] == "2026-03-01T12:05:00.000Z"  # the sixth transaction


def test_card_velocity_rearms_after_the_card_calms_down() -> None:
    first = [tx(n, at=timedelta(minutes=n)) for n in range(6)]
    later = [tx(10 + n, at=timedelta(minutes=60 + n)) for n in range(6)]
    alerts = run_rules(RULES / "velocity.py", first + later)
    assert [a["fields"]["n"] for a in alerts if a["rule"] == "card_velocity"] == [6, 6]


def test_hourly_spend_is_final_per_clock_hour() -> None:
    events = [tx(n, at=timedelta(minutes=10 * n), amount=1800) for n in range(6)]  # 10,800 in 12:00
    events += [tx(10, at=timedelta(minutes=65), amount=9000)]  # 13:05, alone in its hour
    alerts = [a for a in run_rules(RULES / "velocity.py", events) if a["rule"] == "hourly_spend"]
    assert len(alerts) == 1
    (alert,) = alerts
    assert alert["fields"] == {"card_id": "card-1", "total": 10800, "n": 6}
    assert (alert["window_start"], alert["window_end"]) == (
        "2026-03-01T12:00:00.000Z", "2026-03-01T13:00:00.000Z",
    )  # fmt: skip
