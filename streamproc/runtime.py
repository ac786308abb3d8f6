"""The one loop: read shards, run the rules, deliver alerts, checkpoint what is acknowledged.

Everything that does I/O is driven from :meth:`Runtime.run_once`, in one thread, in this order:

1. discover shards (every few seconds): new readers join, ended shards leave;
2. read: each shard whose in-flight budget allows it makes at most one read; the shard processor
   (pure) turns the batch into alerts and dead letters; alerts are *added* to their sinks
   (buffer only) and the batch gets a ticket that counts its undecided deliveries;
3. flush: every sink sends what is due and reports outcomes; each outcome settles one delivery
   of one ticket;
4. checkpoint: a shard's checkpoint moves to the end of the longest run of settled tickets —
   never past a record whose alerts are still undecided.

Backpressure: a shard stops reading while ``max_inflight_records`` of its records are unsettled,
and every shard stops while sinks hold ``max_pending_deliveries``. A slow or failing sink thus
slows reading; memory stays bounded. On stop, reading ends, sinks are drained (up to
``drain_timeout_s``) and settled positions are checkpointed; anything unsettled is read again by
the next run, where deterministic alert ids make re-sent alerts no-ops at idempotent sinks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from streamproc.errors import ConfigError, TransportError
from streamproc.interfaces import (
    DeadLetterDestination,
    Delivery,
    Outcome,
    RestorePoint,
    ShardReader,
    Sink,
    Source,
    StateStore,
)
from streamproc.metrics import Metrics, Totals
from streamproc.processor import ShardProcessor
from streamproc.records import Alert, DeadLetter, Position, RecordBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeSettings:
    max_inflight_records: int = 20_000
    max_inflight_bytes: int = 64 * 1_048_576
    max_pending_deliveries: int = 10_000
    checkpoint_interval_s: float = 2.0
    discovery_interval_s: float = 10.0
    drain_timeout_s: float = 30.0
    idle_sleep_s: float = 0.01
    # Backoff of the dead-letter destination after a failed park (doubles up to the max).
    dead_letter_backoff_s: float = 0.2
    dead_letter_backoff_max_s: float = 20.0
    # Backoff after a failed checkpoint write (doubles up to the max), per shard.
    checkpoint_backoff_s: float = 0.2
    checkpoint_backoff_max_s: float = 10.0
    # A shard that received no record for this long closes its open windows (wall clock), so
    # silence never holds an alert back. Later events for those windows count as late.
    idle_close_s: float = 30.0


@dataclass(slots=True)
class _Ticket:
    """One read batch: its last position, its record count, and its undecided work items."""

    end: Position
    records: int
    size: int  # bytes of the batch's records: memory held until the batch is settled
    pending: int = 0
    # What rebuilds the shard's window state as of this batch (see RestorePoint).
    restore: RestorePoint | None = None


@dataclass(slots=True)
class _Shard:
    reader: ShardReader
    processor: ShardProcessor
    tickets: deque[_Ticket] = field(default_factory=deque)
    settled: Position | None = None  # everything up to here is decided
    settled_restore: RestorePoint | None = None
    checkpointed_closes: int = 0
    # The restore point costs O(keys) to compute, so batches reuse one for up to a second. An
    # older one is safe: replay_from only moves forward, so an older one replays a little more.
    restore_cache: RestorePoint | None = None
    restore_cached_at: float = float("-inf")
    last_data_at: float = 0.0  # clock of the last batch with records (idle window close)
    late_reported: list[int] = field(default_factory=list)
    checkpointed: Position | None = None
    last_checkpoint_at: float = 0.0
    # After a refused checkpoint write (throttling, a store outage): back off before the next.
    checkpoint_failures: int = 0
    checkpoint_retry_at: float = float("-inf")
    inflight_records: int = 0
    inflight_bytes: int = 0
    settled_since_checkpoint: int = 0  # records settled but not yet covered by a checkpoint
    # The reader reported the shard's end *and* the runtime processed that last batch: only
    # then may the shard be checkpointed as ended (its children are read after that).
    end_processed: bool = False
    unparked: list[tuple[_Ticket, list[DeadLetter]]] = field(default_factory=list)


class Runtime:
    """Drives a source, the rules and the sinks. Not thread-safe except :meth:`stop`."""

    def __init__(
        self,
        source: Source,
        processor_factory: Callable[[str], ShardProcessor],
        sinks: Mapping[str, Sink],
        dead_letter: DeadLetterDestination,
        *,
        settings: RuntimeSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        state_store: StateStore | None = None,
    ) -> None:
        self.source = source
        # Snapshots of rule state replay cannot rebuild (inventory), written before checkpoints.
        self.state_store = state_store
        self.processor_factory = processor_factory
        self.sinks = dict(sinks)
        self.dead_letter = dead_letter
        self.settings = settings or RuntimeSettings()
        self.metrics = metrics or Metrics()
        self.totals = Totals()
        self.clock = clock
        self._shards: dict[str, _Shard] = {}
        self._deliveries: dict[int, _Ticket] = {}
        self._next_delivery_id = 0
        self._last_discovery = float("-inf")
        self._stopping = False
        self._dead_letter_failures = 0
        self._dead_letter_retry_at = float("-inf")
        # Readers whose rule state could not be loaded yet (throttling): retried each discovery.
        self._waiting: list[ShardReader] = []

    # ------------------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the loop to stop reading, drain and checkpoint. Safe from signal handlers."""
        self._stopping = True

    def run(
        self,
        *,
        duration: float | None = None,
        on_tick: Callable[[Totals], None] | None = None,
        tick_interval: float = 2.0,
    ) -> Totals:
        """Run until :meth:`stop` or ``duration`` seconds, then drain and checkpoint.

        ``on_tick`` is called from the loop every ``tick_interval`` seconds (live summaries).
        """
        deadline = None if duration is None else self.clock() + duration
        next_tick = self.clock() + tick_interval
        try:
            while not self._stopping:
                now = self.clock()
                if deadline is not None and now >= deadline:
                    break
                if on_tick is not None and now >= next_tick:
                    on_tick(self.totals)
                    next_tick = now + tick_interval
                if not self.run_once():
                    time.sleep(self.settings.idle_sleep_s)
        finally:
            self._stopping = True
            self.drain()
            self.close()
        return self.totals

    def run_once(self) -> bool:
        """One turn of the loop. Returns True if it did any work (read, delivered, settled)."""
        now = self.clock()
        # Discovery also retries shards whose state failed to load, after a second.
        interval = 1.0 if self._waiting else self.settings.discovery_interval_s
        if now - self._last_discovery >= interval:
            self._discover()
            self._last_discovery = now
        busy = False
        if not self._stopping:
            busy |= self._read_all()
        busy |= self._flush_sinks(force=self._stopping)
        busy |= self._park_dead_letters()
        self._settle_and_checkpoint(force=self._stopping)
        return busy

    def drain(self) -> None:
        """Flush every sink until all deliveries are decided or the drain timeout passes, then
        checkpoint what is settled. ``totals.undecided_at_stop`` and
        ``totals.checkpoint_failed_at_stop`` tell the caller whether that fully worked."""
        end = self.clock() + self.settings.drain_timeout_s
        while self._deliveries or any(s.unparked for s in self._shards.values()):
            progress = self._flush_sinks(force=True)
            progress |= self._park_dead_letters()
            self._settle_and_checkpoint(force=False)
            if self.clock() >= end:
                log.warning(
                    "stopping with %d alert deliveries undecided after %.0f s; their records are "
                    "not checkpointed and will be read again on restart",
                    len(self._deliveries),
                    self.settings.drain_timeout_s,
                )
                break
            if not progress:
                time.sleep(self.settings.idle_sleep_s)
        self.totals.undecided_at_stop = len(self._deliveries) + sum(
            len(s.unparked) for s in self._shards.values()
        )
        self.totals.checkpoint_failed_at_stop = not self._settle_and_checkpoint(force=True)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.reader.close()
        for sink in self.sinks.values():
            sink.close()
        self.dead_letter.close()
        self.source.close()

    def backpressured(self) -> bool:
        """True while reading is held back: sinks are full, or a shard's unsettled records or
        bytes are at their limit (a pushed source waits on this before accepting more)."""
        if sum(s.pending() for s in self.sinks.values()) >= self.settings.max_pending_deliveries:
            return True
        return any(
            s.inflight_records >= self.settings.max_inflight_records
            or s.inflight_bytes >= self.settings.max_inflight_bytes
            for s in self._shards.values()
        )

    @property
    def pending_deliveries(self) -> int:
        return len(self._deliveries)

    # ------------------------------------------------------------------------------ stages

    def _discover(self) -> None:
        try:
            readers = self.source.poll_assignments()
        except TransportError as exc:
            if not exc.retryable:
                raise
            log.warning("shard discovery failed, will retry: %s", exc)
            readers = []
        waiting, self._waiting = self._waiting, []
        for reader in [*waiting, *readers]:
            if reader.shard_id in self._shards:
                continue
            processor = self.processor_factory(reader.shard_id)
            if self.state_store is not None:
                # The shard cannot start without its state. After a reshard a child starts from
                # its parents' state (its products were theirs); its own items, newer, last.
                try:
                    items = []
                    for shard_id in (*getattr(reader, "parents", ()), reader.shard_id):
                        items += self.state_store.load(shard_id)
                except TransportError as exc:
                    if not exc.retryable:
                        raise
                    log.warning(
                        "state of shard %s not loaded, will retry: %s", reader.shard_id, exc
                    )
                    self._waiting.append(reader)
                    continue
                processor.load_state(items)
            log.info("reading shard %s", reader.shard_id)
            shard = _Shard(reader, processor)
            if reader.restore_until is not None:
                shard.processor.begin_restore(
                    reader.restore_until,
                    RestorePoint(None, dict(reader.restore_closed_through), 0),
                )
            shard.last_data_at = self.clock()
            shard.late_reported = [0] * len(shard.processor.windows.rules)
            self._shards[reader.shard_id] = shard
        self.totals.shards_active = len(self._shards)

    def _read_all(self) -> bool:
        if sum(s.pending() for s in self.sinks.values()) >= self.settings.max_pending_deliveries:
            return False  # backpressure: sinks are behind; let them drain first
        busy = False
        for shard in list(self._shards.values()):
            if shard.reader.finished:
                continue
            if (
                shard.inflight_records >= self.settings.max_inflight_records
                or shard.inflight_bytes >= self.settings.max_inflight_bytes
            ):
                continue  # backpressure: this shard's earlier records are not settled yet
            batch = shard.reader.next_batch()
            if batch is None:
                continue
            self._note_read(batch)
            if batch.records:
                self._process(shard, batch)
                shard.last_data_at = self.clock()
                busy = True
            elif self._idle(shard):
                self._close_windows(shard, "idle")
                busy = True
            if shard.reader.finished and shard.processor.holds_window_state():
                # A closed shard (a parent after a reshard) gets no more records: its open
                # windows close now, or they would be lost when the shard is checkpointed
                # as ended. (A key's window that spans the split is thus split too.)
                self._close_windows(shard, "ended")
            # Only after its last batch is processed (and has its ticket) may a shard end.
            shard.end_processed = shard.reader.finished
        return busy

    def _idle(self, shard: _Shard) -> bool:
        processor = shard.processor
        return (
            processor.has_windows
            and not processor.restoring  # a rebuild in progress is not silence
            and self.clock() - shard.last_data_at >= self.settings.idle_close_s
            and processor.holds_window_state()
        )

    def _close_windows(self, shard: _Shard, why: str) -> None:
        processor = shard.processor
        end = processor.last_position or shard.settled
        if end is None:  # no record was ever processed here: no window is open
            return
        alerts = processor.flush_windows()
        log.info(
            "shard %s %s: closed its windows (%d alerts)", processor.shard_id, why, len(alerts)
        )
        shard.restore_cache = processor.restore_point()  # a close changes it: refresh now
        shard.restore_cached_at = self.clock()
        ticket = _Ticket(end=end, records=0, size=0, restore=shard.restore_cache)
        self._route(shard, ticket, alerts)
        self._count_matches(alerts, processor.condition_names)
        shard.tickets.append(ticket)
        shard.last_data_at = self.clock()

    def _process(self, shard: _Shard, batch: RecordBatch) -> None:
        processor = shard.processor
        result = processor.process(batch.records)
        last = batch.records[-1]
        size = sum(len(r.data) for r in batch.records)
        ticket = _Ticket(end=last.position, records=len(batch.records), size=size)
        if processor.has_windows:
            now = self.clock()
            if shard.restore_cache is None or now - shard.restore_cached_at >= 1.0:
                shard.restore_cache = processor.restore_point()
                shard.restore_cached_at = now
            ticket.restore = shard.restore_cache
            late = processor.windows.late_events
            for index, count in enumerate(late):
                if count != shard.late_reported[index]:
                    name = processor.windows.rules[index].name
                    self.metrics.late_events.labels(name).inc(count - shard.late_reported[index])
                    self.totals.late_events += count - shard.late_reported[index]
                    shard.late_reported[index] = count
        if result.restored:
            self.totals.records_restored += result.restored
            self.metrics.records_restored.labels(batch.shard_id).inc(result.restored)
        self._route(shard, ticket, result.alerts)
        self._count_matches(result.alerts, processor.condition_names)
        if result.dead_letters:
            ticket.pending += 1
            shard.unparked.append((ticket, result.dead_letters))
            self.totals.records_dead_lettered += len(result.dead_letters)
            self.metrics.records_dead_lettered.labels(batch.shard_id).inc(len(result.dead_letters))
        shard.tickets.append(ticket)
        shard.inflight_records += ticket.records
        shard.inflight_bytes += ticket.size
        rules = processor.ruleset.rules
        for index, count in enumerate(result.matches):
            if count:
                name = rules[index].name
                self.totals.rule_matches[name] = self.totals.rule_matches.get(name, 0) + count
                self.metrics.rule_matches.labels(name).inc(count)

    def _count_matches(self, alerts: list[Alert], conditions: frozenset[str]) -> None:
        """Window, model and inventory alerts count as matches of their rule (condition rules
        count in process, per record)."""
        other_rules = {a.rule for a in alerts if a.rule not in conditions}
        for name in other_rules:
            count = sum(1 for a in alerts if a.rule == name)
            self.totals.rule_matches[name] = self.totals.rule_matches.get(name, 0) + count
            self.metrics.rule_matches.labels(name).inc(count)

    def _route(self, shard: _Shard, ticket: _Ticket, alerts: list[Alert]) -> None:
        """Add each alert to each of its sinks; the ticket counts the undecided deliveries."""
        del shard
        for alert in alerts:
            for sink_name in alert.sinks:
                delivery_id = self._next_delivery_id
                self._next_delivery_id += 1
                self.sinks[sink_name].add(Delivery(delivery_id, alert))
                self._deliveries[delivery_id] = ticket
                ticket.pending += 1

    def _note_read(self, batch: RecordBatch) -> None:
        n = len(batch.records)
        if n:
            self.totals.records_read += n
            self.metrics.records_read.labels(batch.shard_id).inc(n)
        if batch.millis_behind_latest is not None:
            self.totals.millis_behind_latest[batch.shard_id] = batch.millis_behind_latest
            self.metrics.millis_behind_latest.labels(batch.shard_id).set(batch.millis_behind_latest)

    def _flush_sinks(self, *, force: bool) -> bool:
        busy = False
        for name, sink in self.sinks.items():
            if not sink.pending():
                continue
            failures_before = _failures(sink)
            outcomes = sink.flush(force=force)
            for seconds in _batch_seconds(sink):
                self.metrics.sink_batch_seconds.labels(name).observe(seconds)
            if outcomes:
                self._settle(name, outcomes)
                busy = True
            failed = _failures(sink) - failures_before
            if failed:
                self.metrics.sink_failures.labels(name).inc(failed)
        pending = sum(s.pending() for s in self.sinks.values())
        self.totals.pending_deliveries = pending
        self.metrics.pending_deliveries.set(pending)
        return busy

    def _settle(self, sink_name: str, outcomes: list[Outcome]) -> None:
        counts = self.totals.sink_outcomes.setdefault(sink_name, {})
        for outcome in outcomes:
            ticket = self._deliveries.pop(outcome.delivery_id, None)
            if ticket is None:  # a sink reported a delivery twice: a sink bug, never fatal
                log.error("sink %s reported delivery %d twice", sink_name, outcome.delivery_id)
                continue
            ticket.pending -= 1
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            self.metrics.alerts.labels(sink_name, outcome.status).inc()
            if outcome.status == "parked":
                self.totals.alerts_dead_lettered += 1

    def _park_dead_letters(self) -> bool:
        busy = False
        if self.clock() < self._dead_letter_retry_at:
            return False  # backing off after a failure; the entries wait (and hold their batch)
        for shard in self._shards.values():
            while shard.unparked:
                ticket, entries = shard.unparked[0]
                try:
                    self.dead_letter.park(entries)
                except TransportError as exc:
                    self._dead_letter_failures += 1
                    delay = min(
                        self.settings.dead_letter_backoff_max_s,
                        self.settings.dead_letter_backoff_s * 2 ** (self._dead_letter_failures - 1),
                    )
                    self._dead_letter_retry_at = self.clock() + delay
                    log.warning(
                        "dead-letter destination failed, retrying in %.1f s: %s", delay, exc
                    )
                    return busy
                self._dead_letter_failures = 0
                shard.unparked.pop(0)
                ticket.pending -= 1
                busy = True
        return busy

    def _export_window_state(self, shard_id: str, shard: _Shard) -> None:
        """Window memory as a gauge (O(keys): done at checkpoint time, not per batch)."""
        if shard.processor.has_windows:
            for rule, keys in shard.processor.state_keys():
                self.metrics.window_keys.labels(shard_id, rule).set(keys)

    def _settle_and_checkpoint(self, *, force: bool) -> bool:
        """Advance settled positions; write due checkpoints. False if a checkpoint write failed.

        A retryable checkpoint failure is retried on a later turn (reading goes on; the
        checkpoint lag metric grows); a non-retryable one (missing table, access denied) raises.
        """
        now = self.clock()
        all_written = True
        for shard_id, shard in list(self._shards.items()):
            while shard.tickets and shard.tickets[0].pending == 0:
                ticket = shard.tickets.popleft()
                shard.settled = ticket.end
                shard.settled_restore = ticket.restore
                shard.inflight_records -= ticket.records
                shard.inflight_bytes -= ticket.size
                shard.settled_since_checkpoint += ticket.records
            ended = shard.end_processed and not shard.tickets and not shard.unparked
            due = force or (
                now >= shard.checkpoint_retry_at
                and (ended or now - shard.last_checkpoint_at >= self.settings.checkpoint_interval_s)
            )
            closes = shard.settled_restore.closes if shard.settled_restore is not None else 0
            closed = closes != shard.checkpointed_closes  # windows were closed since (idle/end)
            if due and (shard.settled != shard.checkpointed or ended or closed):
                snapshot = None
                try:
                    if self.state_store is not None:
                        snapshot = shard.processor.snapshot(shard.settled)
                        if snapshot:  # the state as of the checkpoint, stored before it
                            self.state_store.save(shard_id, snapshot)
                    self.source.checkpoint(
                        shard_id,
                        shard.settled,
                        shard_ended=ended,
                        restore=None if ended else shard.settled_restore,
                    )
                except TransportError as exc:
                    self.metrics.checkpoint_failures.labels(shard_id).inc()
                    self.totals.checkpoint_failures += 1
                    if not exc.retryable:
                        raise
                    shard.checkpoint_failures += 1
                    delay = min(
                        self.settings.checkpoint_backoff_max_s,
                        self.settings.checkpoint_backoff_s * 2 ** (shard.checkpoint_failures - 1),
                    )
                    shard.checkpoint_retry_at = now + delay
                    log.warning(
                        "checkpoint of %s failed, retrying in %.1f s: %s", shard_id, delay, exc
                    )
                    all_written = False
                    ended = False
                else:
                    if snapshot is not None:
                        shard.processor.commit_snapshot(shard.settled)
                    shard.checkpointed = shard.settled
                    shard.checkpointed_closes = closes
                    shard.checkpoint_failures = 0
                    self._export_window_state(shard_id, shard)
                    shard.last_checkpoint_at = now
                    shard.settled_since_checkpoint = 0
                    self.totals.checkpoints += 1
                    self.metrics.checkpoints.labels(shard_id).inc()
            lag = shard.inflight_records + shard.settled_since_checkpoint
            self.totals.checkpoint_lag_records[shard_id] = lag
            self.metrics.checkpoint_lag.labels(shard_id).set(lag)
            if ended:
                log.info("shard %s read to its end and checkpointed", shard_id)
                shard.reader.close()
                del self._shards[shard_id]
                self.totals.shards_ended += 1
                self.totals.shards_active = len(self._shards)
        return all_written


def _failures(sink: Sink) -> int:
    """Failed attempts a sink has seen so far, if it counts them (``failed_attempts``)."""
    return int(getattr(sink, "failed_attempts", 0))


def _batch_seconds(sink: Sink) -> list[float]:
    """Durations of the service calls a sink made since the last look, if it records them."""
    take = getattr(sink, "take_batch_seconds", None)
    return list(take()) if callable(take) else []


def check_rule_sinks(processor: ShardProcessor, sinks: Mapping[str, Sink]) -> None:
    """Fail at start if a rule targets a sink that is not configured."""
    targets: list[tuple[str, str, tuple[str, ...]]] = [
        (r.name, r.origin, r.sinks or processor.default_sinks) for r in processor.ruleset.rules
    ]
    for window in processor.ruleset.window_rules:
        targets.append((window.name, window.origin, window.sinks or processor.default_sinks))
    for spec in processor.ruleset.stateful_rules:
        stock = getattr(spec, "stock_sink", None)
        names = (spec.sinks or processor.default_sinks) + ((stock,) if stock else ())
        targets.append((spec.name, spec.origin, names))
    for rule_name, origin, names in targets:
        for name in names:
            if name not in sinks:
                enabled = ", ".join(sorted(sinks)) or "none"
                raise ConfigError(
                    f"sinks.{name}",
                    f"rule {rule_name!r} ({origin}) sends to sink {name!r}, which is not "
                    f"enabled (enabled: {enabled}); enable it or change the rule's sinks",
                )
