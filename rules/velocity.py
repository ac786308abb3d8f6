"""Window rules over card transactions: patterns over time. Copy this file to start your own.

A window rule aggregates the records of one key (here a card) over a window of event time and
alerts when a HAVING condition holds. It is one SQL statement::

    SELECT <GROUP BY fields>, <aggregates> [AS alias]
    FROM transactions                       -- any name: the rule reads the stream it runs on
    [WHERE <condition on one record>]       -- same syntax as rule(condition=...)
    GROUP BY <fields>, <window>
    [HAVING <condition on aggregates, aliases and GROUP BY fields>]

Windows (``ts`` is the event-time field; write ARRIVAL_TIME for the time the record arrived):

    TUMBLE(ts, INTERVAL '1' HOUR)                             back-to-back hours
    HOP(ts, INTERVAL '1' MINUTE, INTERVAL '10' MINUTE)        10 minutes, a new one every minute
    SESSION(ts, INTERVAL '30' MINUTE)                         activity until 30 minutes of quiet
    SLIDING(ts, INTERVAL '10' MINUTE)                         the 10 minutes up to each event

Units: MILLISECOND, SECOND, MINUTE, HOUR, DAY (or plural). SLIDING can also be written the
standard way: ``COUNT(*) OVER (PARTITION BY card_id ORDER BY event_time RANGE INTERVAL '10'
MINUTE PRECEDING) AS n ... QUALIFY n > 5``.

Aggregates: COUNT(*), COUNT(x), COUNT(DISTINCT x), SUM(x), AVG(x), MIN(x), MAX(x), where x is a
field (``merchant.country`` for nested ones). HAVING names an aggregate by writing it again
(``HAVING SUM(amount) > 10000``) or by its alias (``HAVING n > 5``); it may use aggregates the
SELECT does not list. NULL and missing values are ignored by every aggregate but COUNT(*).

Options of ``window_rule(...)`` besides ``name``, ``version``, ``severity``, ``sinks`` and
``description`` (as for ``rule``):

- ``emit="final"``: one alert per card and window, when the window closes and HAVING holds;
  ``emit="early"``: one alert per card and window, as soon as HAVING holds. A SLIDING window
  fires on the event that makes HAVING true, e.g. the 6th transaction in 10 minutes.
- ``allowed_lateness=timedelta(minutes=1)``: how far behind the latest event time an event may
  arrive and still count. Later events are ``late="dead_letter"`` (sent to the dead-letter
  destination) or ``late="correction"`` (a correction alert for their window).

Check your rules with ``streamproc rules check rules/``: every mistake is reported with
file:line:column and a hint.
"""

from datetime import timedelta

from streamproc import window_rule

card_velocity = window_rule(
    name="card_velocity",
    version=1,
    sql="""
        SELECT card_id, COUNT(*) AS n
        FROM transactions
        GROUP BY card_id, SLIDING(event_time, INTERVAL '10' MINUTE)
        HAVING COUNT(*) > 5
    """,
    emit="early",
    # Records of one shard can arrive slightly out of event-time order (several producers):
    # accept them up to 30 s behind the newest one seen instead of counting them late.
    allowed_lateness=timedelta(seconds=30),
    severity="HIGH",
    sinks=[],
    description="More than 5 transactions on one card within 10 minutes",
)

hourly_spend = window_rule(
    name="hourly_spend",
    version=1,
    sql="""
        SELECT card_id, SUM(amount) AS total, COUNT(*) AS n
        FROM transactions
        GROUP BY card_id, TUMBLE(event_time, INTERVAL '1' HOUR)
        HAVING SUM(amount) > 10000
    """,
    emit="final",
    allowed_lateness=timedelta(minutes=1),
    severity="MEDIUM",
    sinks=[],
    description="More than 10000 spent on one card within one clock hour",
)
