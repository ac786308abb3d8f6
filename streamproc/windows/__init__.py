"""The window engine: runs one :class:`~streamproc.windowspec.WindowRule` over one shard.

Pure and deterministic: no I/O, no clock, no logging, no dependence on hash order. The same
events in the same order give the same results, in the same order. Times are integer ms since
the epoch (UTC); every window is ``[start, end)``. Modules: :mod:`.operator` (event time,
lateness, replay point), :mod:`.panes` (Tumble, Hop), :mod:`.sessions`, :mod:`.sliding`,
:mod:`.aggregates` (aggregate semantics), :mod:`.eventtime` (:func:`parse_event_time`).

**Event time and watermark.** ``watermark = max event time seen - allowed_lateness``, never
moving back; ``advance_to(w)`` moves it further (idle deadlines). Every record that reaches the
operator moves the max event time, *including records filtered out by WHERE* (time passes for
the shard). A record that raises (missing GROUP BY/WHERE field, non-scalar GROUP BY value, late)
changes nothing. Windows close when ``watermark >= end``: Tumble/Hop at their end, a Session at
``last + gap``.

**Late events.** An event is late iff its time is ``< watermark`` *before* it: one rule for every
window kind (so an accepted event never touches a closed window). ``late="dead_letter"``:
``on_event`` raises :class:`LateEvent` with the reason ``late event: event time <iso> is behind
the watermark <iso> of rule <name>``. ``late="correction"``: closed windows are kept a
*retention* after closing (Tumble/Hop: ``size``; Session: ``gap``; Sliding: ``range``); a late
event within the retention (``time >= watermark - retention``; older ones raise LateEvent) is
added like any event to every window of its key it falls in (for a session: joining/merging as
usual), then:

- each window it is in that is *closed* after the update yields a result with
  ``correction=True`` carrying the recomputed values, if HAVING holds (any emit mode; a
  correction is never a retraction: nothing is emitted when HAVING no longer holds);
- a window it is in that is still open treats it as an ordinary event (early may fire; a final
  result later includes it). A session it reopens (``last + gap`` now past the watermark) closes
  again later; that final result has ``correction=True`` when the session (or a part merged
  into it) was already emitted.

**Emit modes** (Tumble, Hop, Session). ``final``: at close, one result per key and window if
HAVING holds (``event_time_ms`` = greatest event time in it, ``trigger`` = the record that moved
the watermark past the end). ``early``: after each event, for each *open* window of its key that
has not emitted yet: a result as soon as HAVING holds (window bounds as they are then; for a
session ``[first, last + gap)`` so far), and never again for that window — not at close either.
A merged session has emitted if any of its parts had. HAVING ``None`` always holds.

**Tumble/Hop** windows are aligned to the epoch (start = multiples of slide, Python floor for
negative times) and computed from per-key panes of ``slide`` ms (see :mod:`.panes`).

**Session** windows are ``[first, last + gap)``; an event at ``t`` joins every session of its key
with ``first - gap < t < last + gap`` (merging them when there are several).

**Sliding** (``emit`` is ignored): every accepted event at ``t`` evaluates its key's window
``(t - range, t]``, reported as ``[t - range + 1, t + 1)``, over the key's events *that arrived so
far* with a time in that range (out-of-order ones included, later arrivals not). A result fires
when HAVING holds after the event and did not after the key's previous event (edge-triggered: a
burst of 8 with ``COUNT(*) > 5`` fires once, at the 6th; it re-arms when HAVING is false again).
A key with no stored event newer than ``watermark - range - retention`` is forgotten and starts
afresh (previous: false). A late event accepted for correction is handled the same way; its
result has ``correction=True``.

**Results** of one call come in a fixed order: the event's own results (early, sliding,
corrections) by window start, then the windows its time closed by (end, repr(key), start).
``key`` holds the GROUP BY values in order (a float that is whole is its int: 1.0 and 1 are one
group; ``true`` is its own group; a list or object value raises RecordError). ``values`` maps
``rule.select`` to plain JSON values; HAVING sees every aggregate under its ``name`` and
``alias`` and every GROUP BY path. Aggregate semantics: :mod:`.aggregates`.

**State, memory, restarts.** A key's state is freed when it holds no open window, retained
window, pane or sliding item; ``state_size()`` counts it. ``oldest_position()`` is where a
replay must start so that a fresh operator fed the records from there on (discarding results
up to the last processed record) continues exactly like this one: see its docstring.
``flush()`` ends the input: it closes every window and frees everything.
"""

from streamproc.windows.base import LateEvent, WindowResult
from streamproc.windows.eventtime import format_event_time, parse_event_time
from streamproc.windows.operator import WindowOperator

__all__ = [
    "LateEvent",
    "WindowOperator",
    "WindowResult",
    "format_event_time",
    "parse_event_time",
]
