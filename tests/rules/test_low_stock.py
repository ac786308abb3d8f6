"""The shipped inventory rule, through the rule authors' test helper."""

from __future__ import annotations

from pathlib import Path

from streamproc.testing import run_rules

RULES = Path(__file__).resolve().parents[2] / "rules" / "inventory" / "low_stock.py"


def sale(i: int, quantity: int) -> dict[str, object]:
    return {
        "tx_id": f"t{i}",
        "store_id": "store-7",
        "product_id": "sku-42",
        "quantity": quantity,
        "event_time": f"2026-03-01T{i:02d}:00:00Z",
    }


def test_one_alert_at_the_crossing_then_silence_until_restocked_above_30() -> None:
    # 100 -> 20 (alert) -> 15 -> 25 (not re-armed: needs > 30) -> 19 -> 60 (re-armed) -> 20 (alert)
    quantities = [-80, -5, +10, -6, +41, -40]
    alerts = run_rules(RULES, [sale(i, q) for i, q in enumerate(quantities)])
    assert [a["fields"]["current_quantity"] for a in alerts] == [20, 20]
    assert all(a["severity"] == "HIGH" and a["rule"] == "low_stock" for a in alerts)
    assert alerts[0]["store_id"] == "store-7" and alerts[0]["reorder_threshold"] == 20
