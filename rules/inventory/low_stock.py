"""Low-stock alerts per store and product (an inventory threshold rule).

Not in the default rule path (``rules/``): inventory rules need a stream partitioned by store
(every event of a product in one shard), and the demo stream is partitioned by card. Load it
with ``rules.paths = ["rules", "rules/inventory"]`` on a store-partitioned stream. Thresholds
can also come from a DynamoDB table: ``reorder_threshold=ThresholdTable("thresholds")`` (see
streamproc.thresholds).
"""

from streamproc import inventory_rule

low_stock = inventory_rule(
    name="low_stock",
    version=1,
    reorder_threshold=20,  # units; alert when the stock falls to 20 or below
    hysteresis=10,  # re-armed when a restock lifts it above 30
    initial_quantity=100,  # stock before a product's first event
    lead_time_days=3,  # supplier lead time for the suggested order quantity
    sinks=["eventbridge"],  # source inventory.system, detail-type Low Inventory Alert
    description="stock of a product in a store crossed its reorder threshold",
)
