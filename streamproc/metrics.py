"""Prometheus metrics, and the plain counters behind the live summary.

Metric names are a ``Literal`` type so a typo fails type-checking. Metrics are updated once per
batch or per flush by the runtime loop, never per record in the hot path.

Under ``streamproc kcl`` every shard runs in its own child process of the KCL daemon: there
prometheus_client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``, set by the parent),
each child writes its values to files and the parent serves their aggregate (gauges are summed
over the live processes: each per-shard series lives in exactly one child).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

MetricName = Literal[
    "streamproc_records_read_total",
    "streamproc_records_dead_lettered_total",
    "streamproc_rule_matches_total",
    "streamproc_alerts_total",
    "streamproc_sink_failures_total",
    "streamproc_sink_batch_seconds",
    "streamproc_checkpoint_failures_total",
    "streamproc_checkpoint_lag_records",
    "streamproc_checkpoints_total",
    "streamproc_millis_behind_latest",
    "streamproc_pending_deliveries",
    "streamproc_late_events_total",
    "streamproc_records_restored_total",
    "streamproc_window_keys",
]


@dataclass
class Totals:
    """Running totals for the live summary and the final report (no Prometheus needed)."""

    records_read: int = 0
    records_dead_lettered: int = 0
    alerts_dead_lettered: int = 0
    checkpoints: int = 0
    checkpoint_failures: int = 0
    late_events: int = 0
    records_restored: int = 0
    # Set by Runtime.drain: what a stop left undone (0 / False after a clean stop).
    undecided_at_stop: int = 0
    checkpoint_failed_at_stop: bool = False
    rule_matches: dict[str, int] = field(default_factory=dict)
    # sink -> outcome status ("sent", "duplicate", "parked") -> count
    sink_outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    millis_behind_latest: dict[str, int] = field(default_factory=dict)
    checkpoint_lag_records: dict[str, int] = field(default_factory=dict)
    pending_deliveries: int = 0
    shards_active: int = 0
    shards_ended: int = 0


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per runtime)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_read = Counter(
            _n("streamproc_records_read_total"),
            "Records read from the source",
            ["shard"],
            registry=r,
        )
        self.records_dead_lettered = Counter(
            _n("streamproc_records_dead_lettered_total"),
            "Records sent to the dead-letter destination",
            ["shard"],
            registry=r,
        )
        self.rule_matches = Counter(
            _n("streamproc_rule_matches_total"), "Records matched per rule", ["rule"], registry=r
        )
        self.alerts = Counter(
            _n("streamproc_alerts_total"),
            "Alert deliveries decided per sink: sent, duplicate (already there) or parked",
            ["sink", "outcome"],
            registry=r,
        )
        self.sink_failures = Counter(
            _n("streamproc_sink_failures_total"),
            "Failed delivery attempts per sink (retried later or parked)",
            ["sink"],
            registry=r,
        )
        self.sink_batch_seconds = Histogram(
            _n("streamproc_sink_batch_seconds"),
            "Duration of one batch call to a sink's service (PutEvents, PublishBatch, ...)",
            ["sink"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.checkpoint_lag = Gauge(
            _n("streamproc_checkpoint_lag_records"),
            "Records read but not yet covered by a stored checkpoint",
            ["shard"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.checkpoint_failures = Counter(
            _n("streamproc_checkpoint_failures_total"),
            "Checkpoint writes that failed (retried later)",
            ["shard"],
            registry=r,
        )
        self.checkpoints = Counter(
            _n("streamproc_checkpoints_total"), "Checkpoints written", ["shard"], registry=r
        )
        self.millis_behind_latest = Gauge(
            _n("streamproc_millis_behind_latest"),
            "How far the last read was behind the tip of the shard",
            ["shard"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.late_events = Counter(
            _n("streamproc_late_events_total"),
            "Events behind a window rule's watermark (dead-lettered or corrected, per the rule)",
            ["rule"],
            registry=r,
        )
        self.records_restored = Counter(
            _n("streamproc_records_restored_total"),
            "Records read again after a restart only to rebuild window state",
            ["shard"],
            registry=r,
        )
        self.window_keys = Gauge(
            _n("streamproc_window_keys"),
            "Keys holding window state, per shard and window rule (memory grows with these)",
            ["shard", "rule"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pending_deliveries = Gauge(
            _n("streamproc_pending_deliveries"),
            "Alert deliveries buffered in sinks awaiting acknowledgement",
            registry=r,
            multiprocess_mode="livesum",
        )

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` over HTTP on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)


def _n(name: MetricName) -> str:
    # prometheus_client appends "_total" to counters itself.
    return name.removesuffix("_total")
