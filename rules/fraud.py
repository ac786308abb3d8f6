"""Fraud rules over card transactions. Copy this file to start your own rule module.

A rule module is a plain Python file in ``rules/``: every ``rule(...)`` bound to a module-level
name is loaded (files starting with ``_`` are skipped). Check your rules with
``streamproc rules check rules/`` before they ship.

Transaction records carry: tx_id, card_id, amount (a number), currency, merchant (a name),
state and home_state (US state codes), store_id, product_id, quantity (negative for a sale,
positive for a restock) and event_time (ISO-8601, UTC).

Writing a rule::

    rule(
        name="big_refund",          # unique; lower case letters, digits and _
        version=1,                  # bump when the meaning changes (it is part of the alert id)
        condition="quantity > 0 AND amount >= 500 AND currency IN ('USD', 'CAD')",
        select=["tx_id", "amount"], # fields copied into the alert payload
        key="card_id",              # field whose value keys the alert (FIFO message group)
        severity="MEDIUM",          # LOW, MEDIUM, HIGH or CRITICAL
        sinks=[],                   # sink names; empty means every configured sink
        description="Large refund on one card",
    )

The condition is an SQL WHERE clause: = <> < <= > >=, AND OR NOT, IN (...), BETWEEN, LIKE
('a%' prefix, '_' one character), IS [NOT] NULL, + - * / %, LOWER/UPPER/LENGTH/ABS/COALESCE,
nested fields as ``merchant.country``, odd names quoted as ``"odd name"``, strings in single
quotes. A comparison with NULL is never true, and a string never equals a number. A record that
lacks a field the condition needs is dead-lettered with the field's name.

Conditions SQL cannot express can be Python predicates; a KeyError counts as a missing field::

    @predicate_rule(name="round_amount", select=["tx_id", "amount"], key="card_id")
    def round_amount(tx):
        '''Whole-hundred amounts: a common card-testing pattern.'''
        return tx["amount"] >= 100 and tx["amount"] % 100 == 0
"""

from streamproc import rule

high_value_out_of_state = rule(
    name="high_value_out_of_state",
    version=1,
    condition="amount > 2000 AND state <> home_state",
    select=[
        "tx_id",
        "card_id",
        "amount",
        "currency",
        "merchant",
        "state",
        "home_state",
        "event_time",
    ],
    key="card_id",
    severity="HIGH",
    sinks=[],
    description="Card used for more than 2000 outside its home state",
)
