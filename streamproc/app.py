"""Wiring: build the runtime (source, rules, sinks, dead letters, metrics) from a Config."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from connectors.aws import make_client
from connectors.checkpoints import DynamoDbCheckpointStore
from connectors.deadletter import FileDeadLetter, SqsDeadLetter
from connectors.dynamodb import DynamoDbAlertSink
from connectors.eventbridge import EventBridgeSink
from connectors.inventory_table import InventoryTableSink
from connectors.kinesis import KinesisPollerSource
from connectors.sns import SnsSink
from connectors.sqs import SqsSink
from connectors.state import DynamoDbStateStore
from streamproc.config import Config as StreamprocConfig
from streamproc.emulators import LOCAL_CREDENTIALS, free_port
from streamproc.interfaces import DeadLetterDestination, Sink
from streamproc.metrics import Metrics
from streamproc.processor import DecodeLimits, ShardProcessor
from streamproc.ruleset import RuleSet, load_rules
from streamproc.runtime import Runtime, RuntimeSettings, check_rule_sinks

log = logging.getLogger(__name__)

_CHECKPOINT_CLIENT = Config(
    connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 2}
)


@dataclass
class App:
    runtime: Runtime
    ruleset: RuleSet
    metrics_url: str | None

    @property
    def rule_names(self) -> list[str]:
        return [r.name for r in self.ruleset.rules]


@dataclass
class Parts:
    """What every source shares: rules, sinks, dead letters, settings, a client factory."""

    ruleset: RuleSet
    sinks: dict[str, Sink]
    dead_letter: DeadLetterDestination
    processor_factory: Callable[[str], ShardProcessor]
    settings: RuntimeSettings
    client: Callable[..., Any]


def build_parts(config: StreamprocConfig, *, local: bool = False) -> Parts:
    """Rules, sinks and the rest, validated; no I/O (see :func:`build_app`)."""
    ruleset = load_rules(config.rules.paths)
    credentials: dict[str, Any] = dict(LOCAL_CREDENTIALS) if local else {}

    def client(service: str, **kw: Any) -> Any:
        endpoint = config.aws.endpoint_url
        if service == "kinesis" and config.aws.kinesis_endpoint_url:
            endpoint = config.aws.kinesis_endpoint_url
        return make_client(
            service,
            region=config.aws.region,
            endpoint_url=endpoint,
            **credentials,
            **kw,
        )

    dead_letter: DeadLetterDestination
    if config.dead_letter.kind == "sqs":
        dead_letter = SqsDeadLetter(client("sqs"), config.dead_letter.queue_url)
    else:
        dead_letter = FileDeadLetter(config.dead_letter.path)

    sinks = build_sinks(config, client, dead_letter)
    limits = DecodeLimits(
        max_record_bytes=config.limits.max_record_bytes,
        max_nesting_depth=config.limits.max_nesting_depth,
    )
    # Rules without their own sinks alert everywhere, but the inventory table takes only the
    # stock updates of inventory rules that name it.
    default_sinks = tuple(name for name in sinks if name != "inventory_table")

    def processor_factory(shard_id: str) -> ShardProcessor:
        return ShardProcessor(
            ruleset,
            identity_field=config.rules.identity_field,
            event_time_field=config.rules.event_time_field,
            limits=limits,
            default_sinks=default_sinks,
            shard_id=shard_id,
            max_event_time_skew_ms=int(config.rules.max_event_time_skew_s * 1000),
        )

    check_rule_sinks(processor_factory("-"), sinks)
    settings = RuntimeSettings(
        max_inflight_records=config.limits.max_inflight_records,
        max_inflight_bytes=config.limits.max_inflight_bytes,
        max_pending_deliveries=config.limits.max_pending_deliveries,
        checkpoint_interval_s=config.runtime.checkpoint_interval_s,
        discovery_interval_s=config.source.discovery_interval_s,
        drain_timeout_s=config.runtime.drain_timeout_s,
        idle_close_s=config.runtime.idle_close_s,
    )
    return Parts(ruleset, sinks, dead_letter, processor_factory, settings, client)


def checkpoint_store(config: StreamprocConfig, parts: Parts) -> DynamoDbCheckpointStore:
    # Checkpoint writes run inside the loop: fail fast (the runtime retries on a later turn)
    # rather than block every shard through botocore's retries during a DynamoDB outage.
    return DynamoDbCheckpointStore(
        parts.client("dynamodb", config=_CHECKPOINT_CLIENT), config.source.checkpoint_table
    )


def state_store(config: StreamprocConfig, parts: Parts) -> DynamoDbStateStore | None:
    """The rule-state store, if a rule snapshots its state (inventory rules)."""
    if not any(spec.snapshots for spec in parts.ruleset.stateful_rules):
        return None
    return DynamoDbStateStore(
        parts.client("dynamodb", config=_CHECKPOINT_CLIENT),
        config.source.state_table,
        config.source.stream,
    )


def build_app(config: StreamprocConfig, *, local: bool = False, serve_metrics: bool = True) -> App:
    """Everything ``streamproc run`` needs, validated before any record is read.

    Rule errors raise ``RuleCompileError``; a rule naming a sink that is not enabled raises
    ``ConfigError``. Creating clients does no I/O, so an unreachable endpoint shows up on the
    first read (as a retried transport error), not here.
    """
    parts = build_parts(config, local=local)
    source = KinesisPollerSource(
        # The reader backs off itself without blocking the loop; botocore's retries would sleep.
        parts.client(
            "kinesis", config=Config(retries={"mode": "standard", "total_max_attempts": 1})
        ),
        stream=config.source.stream,
        checkpoints=checkpoint_store(config, parts),
        start_position=config.source.start_position,
        start_timestamp=config.source.start_timestamp,
        max_records_per_call=config.source.max_records_per_call,
        min_call_interval=config.source.poll_interval_ms / 1000,
    )
    metrics = Metrics()
    metrics_url = None
    if config.metrics.enabled and serve_metrics:
        metrics_url = _serve_metrics(metrics, config, local=local)
    runtime = Runtime(
        source,
        parts.processor_factory,
        parts.sinks,
        parts.dead_letter,
        settings=parts.settings,
        metrics=metrics,
        state_store=state_store(config, parts),
    )
    return App(runtime=runtime, ruleset=parts.ruleset, metrics_url=metrics_url)


def build_sinks(config: Config, client: Any, dead_letter: DeadLetterDestination) -> dict[str, Sink]:
    s = config.sinks
    options: dict[str, Any] = {"max_attempts": s.max_attempts, "linger_seconds": s.linger_ms / 1000}
    sinks: dict[str, Sink] = {}
    if s.eventbridge.enabled:
        sinks["eventbridge"] = EventBridgeSink(
            client("events"),
            bus_name=s.eventbridge.bus_name,
            source=s.eventbridge.source,
            detail_type=s.eventbridge.detail_type,
            dead_letter=dead_letter,
            **options,
        )
    if s.sns.enabled:
        sinks["sns"] = SnsSink(
            client("sns"), topic_arn=s.sns.topic_arn, dead_letter=dead_letter, **options
        )
    if s.sqs.enabled:
        sinks["sqs"] = SqsSink(
            client("sqs"), queue_url=s.sqs.queue_url, dead_letter=dead_letter, **options
        )
    if s.dynamodb.enabled:
        sinks["dynamodb"] = DynamoDbAlertSink(
            client("dynamodb"), table=s.dynamodb.table, dead_letter=dead_letter, **options
        )
    if s.inventory_table.enabled:
        sinks["inventory_table"] = InventoryTableSink(
            client("dynamodb"), table=s.inventory_table.table, dead_letter=dead_letter, **options
        )
    return sinks


def _serve_metrics(metrics: Metrics, config: StreamprocConfig, *, local: bool) -> str:
    host, port = config.metrics.host, config.metrics.port
    try:
        metrics.serve(host, port)
    except OSError as exc:
        if not local:
            from streamproc.errors import ConfigError

            raise ConfigError(
                "metrics.port", f"cannot serve metrics on {host}:{port}: {exc}"
            ) from None
        # The local demo should not fail because another run holds the port.
        port = free_port()
        log.warning("metrics port %d busy; serving on %d instead", config.metrics.port, port)
        metrics.serve(host, port)
    return f"http://{host}:{port}/metrics"
