"""Twenty rules of the hot-path benchmark: fourteen conditions and six windows, mixed.

Conditions of the kinds fraud teams write (thresholds, lists, patterns, arithmetic), windows
of every kind (sliding, tumbling, hopping, session) over cards and stores. Most records match
nothing, as in production: the benchmark measures the cost of looking.
"""

from datetime import timedelta

from streamproc import rule, window_rule

CARD = ["tx_id", "card_id", "amount", "merchant", "state", "home_state"]

high_value_out_of_state = rule(
    name="high_value_out_of_state",
    condition="amount > 2000 AND state <> home_state",
    select=CARD,
    key="card_id",
    severity="HIGH",
)
very_high_value = rule(
    name="very_high_value", condition="amount >= 9000", select=CARD, key="card_id"
)
luxury_out_of_state = rule(
    name="luxury_out_of_state",
    condition="merchant IN ('Luxe Watches', 'Jet Travel') AND state <> home_state AND amount > 500",
    select=CARD,
    key="card_id",
)
new_online_merchant = rule(
    name="new_online_merchant",
    condition="merchant LIKE '% Online %' AND amount > 1000",
    select=CARD,
    key="card_id",
)
round_amount = rule(
    name="round_amount",
    condition="amount >= 500 AND amount % 100 = 0",
    select=CARD,
    key="card_id",
    severity="LOW",
)
big_restock = rule(
    name="big_restock",
    condition="quantity >= 95",
    select=["tx_id", "store_id", "product_id", "quantity"],
    key="store_id",
    severity="LOW",
)
refund_like = rule(
    name="refund_like",
    condition="quantity > 0 AND amount BETWEEN 1500 AND 2000",
    select=CARD,
    key="card_id",
)
west_coast_high = rule(
    name="west_coast_high",
    condition="state IN ('CA', 'OR', 'WA') AND amount > 5000",
    select=CARD,
    key="card_id",
)
pharmacy_spree = rule(
    name="pharmacy_spree",
    condition="merchant = 'Pharma Plus' AND amount > 800",
    select=CARD,
    key="card_id",
)
fuel_far_from_home = rule(
    name="fuel_far_from_home",
    condition="merchant = 'FuelMax' AND state <> home_state AND amount > 150",
    select=CARD,
    key="card_id",
)
non_usd = rule(name="non_usd", condition="currency <> 'USD'", select=CARD, key="card_id")
store_zero = rule(
    name="store_zero",
    condition="store_id = 'store-0000' AND quantity < -4",
    select=["tx_id", "store_id", "product_id", "quantity"],
    key="store_id",
    severity="LOW",
)
tiny_amount = rule(
    name="tiny_amount",
    condition="amount < 1 AND quantity < 0",
    select=CARD,
    key="card_id",
    severity="LOW",
)
electronics_high = rule(
    name="electronics_high",
    condition="LOWER(merchant) = 'electrohub' AND amount * 2 > 7000",
    select=CARD,
    key="card_id",
)

card_velocity = window_rule(
    name="card_velocity",
    sql="""SELECT card_id, COUNT(*) AS n FROM transactions
           GROUP BY card_id, SLIDING(event_time, INTERVAL '10' MINUTE) HAVING COUNT(*) > 5""",
    emit="early",
    allowed_lateness=timedelta(seconds=30),
    severity="HIGH",
)
hourly_spend = window_rule(
    name="hourly_spend",
    sql="""SELECT card_id, SUM(amount) AS total, COUNT(*) AS n FROM transactions
           GROUP BY card_id, TUMBLE(event_time, INTERVAL '1' HOUR) HAVING SUM(amount) > 10000""",
    emit="final",
    allowed_lateness=timedelta(minutes=1),
)
card_burst = window_rule(
    name="card_burst",
    sql="""SELECT card_id, COUNT(*) AS n FROM transactions
           GROUP BY card_id, SLIDING(event_time, INTERVAL '1' MINUTE) HAVING COUNT(*) >= 20""",
    emit="early",
    allowed_lateness=timedelta(seconds=30),
    severity="HIGH",
)
store_rush = window_rule(
    name="store_rush",
    sql="""SELECT store_id, COUNT(*) AS sales FROM transactions WHERE quantity < 0
           GROUP BY store_id, HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)
           HAVING COUNT(*) > 2000""",
    emit="final",
    allowed_lateness=timedelta(seconds=30),
    severity="LOW",
)
merchant_hopping = window_rule(
    name="merchant_hopping",
    sql="""SELECT card_id, COUNT(DISTINCT merchant) AS merchants FROM transactions
           GROUP BY card_id, TUMBLE(event_time, INTERVAL '10' MINUTE)
           HAVING COUNT(DISTINCT merchant) >= 8""",
    emit="early",
    allowed_lateness=timedelta(seconds=30),
)
card_session = window_rule(
    name="card_session",
    sql="""SELECT card_id, COUNT(*) AS n, SUM(amount) AS total FROM transactions
           GROUP BY card_id, SESSION(event_time, INTERVAL '5' MINUTE)
           HAVING COUNT(*) >= 10 AND SUM(amount) > 5000""",
    emit="final",
    allowed_lateness=timedelta(seconds=30),
)
