"""Configuration: one TOML file plus environment overrides, validated at start.

Precedence: built-in defaults < the TOML file < environment variables. An environment variable
``STREAMPROC__<SECTION>__<KEY>`` (double underscores, case-insensitive) overrides ``[section] key``,
e.g. ``STREAMPROC__SOURCE__STREAM=payments``; nested sections add levels
(``STREAMPROC__SINKS__SQS__QUEUE_URL``). Every value is checked against the schema below; a wrong
value fails at start with the key's dotted name and what is expected. ``streamproc.sample.toml``
in the repository documents every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from streamproc.errors import ConfigError

ENV_PREFIX = "STREAMPROC__"


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class AwsConfig:
    region: str = "us-east-1"
    # Set for emulators (moto, kinesis-mock); empty means the real AWS endpoints.
    endpoint_url: str | None = None
    # Kinesis only, when it is served elsewhere than the other services (kinesis-mock for the
    # KCL daemon, moto for the rest). Empty: ``endpoint_url``.
    kinesis_endpoint_url: str | None = None


StartPosition = Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]


@dataclass(frozen=True)
class SourceConfig:
    stream: str = "transactions"
    start_position: StartPosition = "TRIM_HORIZON"
    start_timestamp: datetime | None = None
    checkpoint_table: str = "streamproc-checkpoints"
    # DynamoDB table of rule state snapshots (inventory rules): hash key "shard", range key
    # "item", both S. Used only when a rule needs it.
    state_table: str = "streamproc-state"
    max_records_per_call: int = field(default=1000, metadata=_range(1, 10_000))
    # Kinesis allows 5 GetRecords calls per second per shard, shared by every consumer.
    poll_interval_ms: int = field(default=200, metadata=_range(200, 60_000))
    # How often the shard list is re-read (new shards after resharding).
    discovery_interval_s: float = field(default=10.0, metadata=_range(0.5, 3600))


@dataclass(frozen=True)
class RulesConfig:
    paths: tuple[str, ...] = ("rules",)
    # Field that identifies a record for alert ids; records without it fall back to
    # shard + sequence number (stable across replays of the same stream, not across streams).
    identity_field: str = "tx_id"
    event_time_field: str = "event_time"
    # Window rules refuse (dead-letter) a record whose event time is more than this far ahead
    # of its arrival time: one such record would otherwise move the watermark into the future.
    max_event_time_skew_s: float = field(default=3600.0, metadata=_range(0.0, 10 * 365 * 86400))


@dataclass(frozen=True)
class LimitsConfig:
    max_record_bytes: int = field(default=1_048_576, metadata=_range(16, 10 * 1_048_576))
    max_nesting_depth: int = field(default=32, metadata=_range(1, 1000))
    # Backpressure: a shard stops reading while this many of its records await acknowledgement.
    max_inflight_records: int = field(default=20_000, metadata=_range(1, 10_000_000))
    # Backpressure: a shard stops reading while this many bytes of its records are unsettled
    # (bounds memory when records are large, e.g. while the dead-letter destination is down).
    max_inflight_bytes: int = field(default=64 * 1_048_576, metadata=_range(1, 1 << 40))
    # Backpressure: all shards stop reading while this many deliveries await their sink.
    max_pending_deliveries: int = field(default=10_000, metadata=_range(1, 10_000_000))


@dataclass(frozen=True)
class EventBridgeSinkConfig:
    enabled: bool = False
    bus_name: str = "default"
    source: str = "streamproc"
    detail_type: str = "Fraud Alert"


@dataclass(frozen=True)
class SnsSinkConfig:
    enabled: bool = False
    topic_arn: str = ""


@dataclass(frozen=True)
class SqsSinkConfig:
    enabled: bool = False
    queue_url: str = ""


@dataclass(frozen=True)
class DynamoDbSinkConfig:
    enabled: bool = False
    table: str = "streamproc-alerts"


@dataclass(frozen=True)
class InventoryTableSinkConfig:
    enabled: bool = False
    # hash key "store_id", range key "product_id" (S); see connectors/inventory_table.py
    table: str = "inventory"


@dataclass(frozen=True)
class SinksConfig:
    eventbridge: EventBridgeSinkConfig = EventBridgeSinkConfig()
    sns: SnsSinkConfig = SnsSinkConfig()
    sqs: SqsSinkConfig = SqsSinkConfig()
    dynamodb: DynamoDbSinkConfig = DynamoDbSinkConfig()
    inventory_table: InventoryTableSinkConfig = InventoryTableSinkConfig()
    # Retryable failures are retried with backoff this many times before the alert is parked.
    max_attempts: int = field(default=8, metadata=_range(1, 100))
    linger_ms: int = field(default=50, metadata=_range(0, 60_000))


@dataclass(frozen=True)
class DeadLetterConfig:
    kind: Literal["file", "sqs"] = "file"
    path: str = "streamproc-deadletter.jsonl"
    queue_url: str = ""


@dataclass(frozen=True)
class RuntimeConfig:
    checkpoint_interval_s: float = field(default=2.0, metadata=_range(0.0, 3600))
    # On stop: how long to keep flushing sinks before giving up (unacknowledged records are
    # then simply not checkpointed, so they are read again after restart: nothing is lost).
    drain_timeout_s: float = field(default=30.0, metadata=_range(0.0, 3600))
    # A shard silent for this long (wall clock) closes its open windows: alerts are never held
    # back by silence. Events for those windows that arrive later are late events.
    idle_close_s: float = field(default=30.0, metadata=_range(0.1, 86_400))


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    # Loopback by default. To be scraped from outside an ECS task, set the wildcard address
    # (see deploy/README.md): in awsvpc mode that exposes the port on the task's network
    # interface, so restrict it with the task's security group.
    host: str = "127.0.0.1"
    port: int = field(default=9108, metadata=_range(0, 65_535))


@dataclass(frozen=True)
class KclConfig:
    """``streamproc kcl``: the KCL MultiLangDaemon as the source (see README, "Scaling out")."""

    # KCL application: the lease table's name, shared by every task of the application.
    application_name: str = "streamproc"
    # This task's name in the lease table; empty: <hostname>-<pid>.
    worker_id: str = ""
    # Directory of the KCL jars (tools/kcl/fetch-jars); empty: the STREAMPROC_KCL_JARS
    # environment variable, else .cache/kcl-jars/3.1.3 under the working directory.
    jars_dir: str = ""
    java: str = "java"
    # POLLING (GetRecords) or FANOUT (enhanced fan-out, SubscribeToShard; real AWS only).
    retrieval_mode: Literal["POLLING", "FANOUT"] = "POLLING"
    # A worker that has not renewed its leases for this long is presumed dead: its shards move.
    failover_time_ms: int = field(default=10_000, metadata=_range(1_000, 3_600_000))
    # Must be > 0: on SIGTERM the daemon then asks every shard to checkpoint before it exits.
    shutdown_grace_ms: int = field(default=20_000, metadata=_range(1, 3_600_000))
    # NONE, SUMMARY or DETAILED: the daemon's own CloudWatch metrics (ours are Prometheus).
    metrics_level: Literal["NONE", "SUMMARY", "DETAILED"] = "NONE"
    shard_sync_interval_ms: int = field(default=60_000, metadata=_range(1_000, 86_400_000))
    idle_time_between_reads_ms: int = field(default=1_000, metadata=_range(200, 60_000))
    max_records: int = field(default=10_000, metadata=_range(1, 10_000))
    # Seconds the daemon gets to exit after the forwarded SIGTERM before it is killed.
    stop_timeout_s: float = field(default=60.0, metadata=_range(1.0, 3600))


@dataclass(frozen=True)
class Config:
    aws: AwsConfig = AwsConfig()
    source: SourceConfig = SourceConfig()
    rules: RulesConfig = RulesConfig()
    limits: LimitsConfig = LimitsConfig()
    sinks: SinksConfig = SinksConfig()
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    metrics: MetricsConfig = MetricsConfig()
    kcl: KclConfig = KclConfig()

    def validate(self) -> Config:
        """Cross-field checks that a single value's type cannot express."""
        if self.source.start_position == "AT_TIMESTAMP" and self.source.start_timestamp is None:
            raise ConfigError(
                "source.start_timestamp",
                "required when source.start_position = AT_TIMESTAMP (ISO-8601 with a UTC offset)",
            )
        s = self.sinks
        if s.sns.enabled and not s.sns.topic_arn:
            raise ConfigError("sinks.sns.topic_arn", "required when sinks.sns.enabled = true")
        if s.sqs.enabled and not s.sqs.queue_url:
            raise ConfigError("sinks.sqs.queue_url", "required when sinks.sqs.enabled = true")
        if self.dead_letter.kind == "sqs" and not self.dead_letter.queue_url:
            raise ConfigError("dead_letter.queue_url", "required when dead_letter.kind = 'sqs'")
        if not self.enabled_sinks():
            raise ConfigError(
                "sinks", "no sink is enabled: set sinks.<name>.enabled = true for at least one"
            )
        return self

    def enabled_sinks(self) -> tuple[str, ...]:
        s = self.sinks
        names = ("eventbridge", "sns", "sqs", "dynamodb")
        return tuple(n for n in names if getattr(s, n).enabled)


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    validate: bool = True,
) -> Config:
    """Read defaults, then ``path`` (TOML) if given, then ``STREAMPROC__*`` env overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file {str(p)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{p} is not valid TOML: {exc}") from None
    overrides = env_overrides(os.environ if env is None else env)
    merged = _merge(raw, overrides)
    config = build(Config, merged, "")
    # Local mode fills in the sink targets itself and validates afterwards.
    return config.validate() if validate else config


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _EnvString(value)
    return out


class _EnvString(str):
    """A value that came from the environment: always text, converted by the target type."""

    __slots__ = ()


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


T = typing.TypeVar("T")


def build(cls: type[T], raw: Mapping[str, Any], prefix: str) -> T:
    """Build dataclass ``cls`` from ``raw``, checking every key and value."""
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix or "<root>", f"expected a table, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(_join(prefix, key), f"unknown key (known: {known}){hint}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        dotted = _join(prefix, name)
        values[name] = _convert(hints[name], raw[name], dotted, f.metadata)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value == ""):
            return None
        return _convert(args[0], value, key, meta)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                key, f"expected one of {', '.join(map(str, choices))}; got {_show(value)}"
            )
        return str(value)
    if origin is tuple:
        if isinstance(value, _EnvString):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings; got {_show(value)}")
        return tuple(value)
    if tp is bool:
        if isinstance(value, _EnvString):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false; got {_show(value)}")
    if tp is int or tp is float:
        number: int | float
        if isinstance(value, _EnvString):
            try:
                number = tp(value.strip())
            except ValueError:
                raise ConfigError(
                    key, f"expected a{'n integer' if tp is int else ' number'}; got {_show(value)}"
                ) from None
        elif (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (tp is int and not isinstance(value, int))
        ):
            raise ConfigError(
                key, f"expected a{'n integer' if tp is int else ' number'}; got {_show(value)}"
            )
        else:
            number = tp(value)
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise ConfigError(key, f"expected a value between {lo} and {hi}; got {number}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string; got {_show(value)}")
        return str(value)
    if tp is datetime:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ConfigError(
                    key, f"expected an ISO-8601 timestamp; got {_show(value)}"
                ) from None
        else:
            raise ConfigError(key, f"expected an ISO-8601 timestamp; got {_show(value)}")
        if parsed.tzinfo is None:
            raise ConfigError(key, "timestamp needs a UTC offset, e.g. 2026-01-31T12:00:00Z")
        return parsed
    raise ConfigError(key, f"unsupported type {tp!r} in the schema")  # pragma: no cover


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _show(value: Any) -> str:
    if isinstance(value, _EnvString):
        return f"{str(value)!r} (from the environment)"
    return f"{value!r} ({type(value).__name__})"
