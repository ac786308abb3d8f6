"""The seed rule set of the hot-path benchmark: one condition, one window, one inventory rule.

The same three rules are written by hand in ``benchmarks/handloop.py``; the benchmark checks that
both give the same alerts. The condition and the window are the shipped ``rules/fraud.py`` and
``rules/velocity.py`` ones; the inventory rule starts products low enough (30 units, threshold
20) that the data set's sales cross the threshold now and then.
"""

from datetime import timedelta

from streamproc import inventory_rule, rule, window_rule

high_value_out_of_state = rule(
    name="high_value_out_of_state",
    condition="amount > 2000 AND state <> home_state",
    select=["tx_id", "card_id", "amount", "currency", "merchant", "state", "home_state"],
    key="card_id",
    severity="HIGH",
)

card_velocity = window_rule(
    name="card_velocity",
    sql="""
        SELECT card_id, COUNT(*) AS n
        FROM transactions
        GROUP BY card_id, SLIDING(event_time, INTERVAL '10' MINUTE)
        HAVING COUNT(*) > 5
    """,
    emit="early",
    allowed_lateness=timedelta(seconds=30),
    severity="HIGH",
)

low_stock = inventory_rule(
    name="low_stock",
    reorder_threshold=20,
    hysteresis=10,
    initial_quantity=30,
    lead_time_days=3,
)
