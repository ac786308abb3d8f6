"""A fraud-score model as a rule: a gradient-boosted tree model scores every transaction.

The model (``models/fraud_gbt.txt``, LightGBM's own text format, never pickle) is trained by
``tools/train_fraud_model.py`` on the project's seeded demo data; it reads these features (see
``streamproc.features``): amount, out_of_state, tx_count_10m, spend_1h, distinct_merchants_1h,
amount_vs_mean_1h, new_merchant. Transactions are scored per batch; a score above the threshold
is an alert whose severity follows the score (> 0.9 CRITICAL, > 0.7 HIGH, > 0.5 MEDIUM). Replace
the model file while the service runs: the new one is validated and swapped between batches.
"""

from streamproc import model_rule

fraud_score = model_rule(
    name="fraud_score",
    version=1,
    model="models/fraud_gbt.txt",
    threshold=0.8,
    key="card_id",
    select=["tx_id", "card_id", "amount", "merchant", "state", "home_state"],
    description="fraud probability from the gradient-boosted model above 0.8",
)
