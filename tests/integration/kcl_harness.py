"""Helpers for tests of ``streamproc kcl`` with the real KCL MultiLangDaemon.

Kinesis is kinesis-mock (the daemon's HTTP/2 client needs it), DynamoDB (lease table, our
checkpoint table, the alert table) and the sinks are the shared moto server; all on 127.0.0.1.
Each worker is a real ``streamproc kcl`` process (the daemon and its per-shard children), with
its log in the test's directory and a trace of every batch its children processed
(``STREAMPROC_KCL_TRACE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from streamproc.config import (
    Config,
    DeadLetterConfig,
    DynamoDbSinkConfig,
    KclConfig,
    MetricsConfig,
    RulesConfig,
    RuntimeConfig,
    SinksConfig,
    SourceConfig,
)
from streamproc.emulators import LOCAL_CREDENTIALS
from streamproc.local import LocalResources, provision
from streamproc.processor import ShardProcessor
from streamproc.records import Record
from streamproc.ruleset import load_rules

ROOT = Path(__file__).resolve().parents[2]
JARS = Path(os.environ.get("STREAMPROC_KCL_JARS", ROOT / ".cache" / "kcl-jars" / "3.1.3"))

# A sliding-window rule (state that must move with the lease) next to the condition rule.
VELOCITY_RULE = """
from datetime import timedelta

from streamproc import window_rule

card_velocity = window_rule(
    name="card_velocity",
    version=1,
    sql=\"\"\"
        SELECT card_id, COUNT(*) AS n
        FROM transactions
        GROUP BY card_id, SLIDING(event_time, INTERVAL '10' MINUTE)
        HAVING COUNT(*) > 5
    \"\"\",
    emit="early",
    allowed_lateness=timedelta(seconds=30),
    severity="HIGH",
)
"""


def to_toml(value: Any, prefix: str = "") -> str:
    """A configuration dataclass as TOML (the subset our schema uses)."""
    scalars: list[str] = []
    tables: list[str] = []
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if dataclasses.is_dataclass(item):
            name = f"{prefix}.{f.name}" if prefix else f.name
            tables.append(f"[{name}]\n" + to_toml(item, name))
        elif item is not None:
            scalars.append(f"{f.name} = {_toml_value(item)}")
    return "\n".join(scalars) + "\n\n" + "\n".join(tables)


def _toml_value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return repr(item)
    if isinstance(item, tuple | list):
        return "[" + ", ".join(_toml_value(i) for i in item) + "]"
    if isinstance(item, datetime):
        return item.isoformat()
    return orjson.dumps(str(item)).decode()


@dataclass
class Put:
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


@dataclass
class KclEnv:
    name: str
    config: Config
    config_path: Path
    resources: LocalResources
    kinesis: Any  # boto3 client of kinesis-mock
    tmp: Path
    puts: list[Put] = field(default_factory=list)

    @property
    def stream(self) -> str:
        return self.config.source.stream

    @property
    def application(self) -> str:
        return self.config.kcl.application_name

    @property
    def trace_dir(self) -> Path:
        return self.tmp / "trace"

    def client(self, service: str) -> Any:
        return self.resources.client(service)

    def put(self, payloads: Iterable[tuple[bytes, str]], batch: int = 100) -> list[Put]:
        """PutRecords in batches; returns (and remembers) where each record went."""
        pending = list(payloads)
        out: list[Put] = []
        for start in range(0, len(pending), batch):
            chunk = pending[start : start + batch]
            response = self.kinesis.put_records(
                StreamName=self.stream,
                Records=[{"Data": d, "PartitionKey": k} for d, k in chunk],
            )
            assert not response.get("FailedRecordCount"), response
            for (data, key), entry in zip(chunk, response["Records"], strict=True):
                out.append(Put(entry["ShardId"], entry["SequenceNumber"], key, data))
        self.puts.extend(out)
        return out

    def seed_leases(self) -> None:
        """Create the lease table with one TRIM_HORIZON lease per open shard, as the daemon's
        first shard sync would. Saves the 1-30 s random wait a daemon does while it finds the
        lease table empty (tools/kcl/README.md); the daemon still owns every later change."""
        ddb = self.client("dynamodb")
        ddb.create_table(
            TableName=self.application,
            AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for shard in self.kinesis.list_shards(StreamName=self.stream)["Shards"]:
            hash_range = shard["HashKeyRange"]
            ddb.put_item(
                TableName=self.application,
                Item={
                    "leaseKey": {"S": shard["ShardId"]},
                    "checkpoint": {"S": "TRIM_HORIZON"},
                    "checkpointSubSequenceNumber": {"N": "0"},
                    "leaseCounter": {"N": "0"},
                    "ownerSwitchesSinceCheckpoint": {"N": "0"},
                    "startingHashKey": {"S": hash_range["StartingHashKey"]},
                    "endingHashKey": {"S": hash_range["EndingHashKey"]},
                },
            )

    def leases(self) -> dict[str, dict[str, str]]:
        ddb = self.client("dynamodb")
        if self.application not in ddb.list_tables()["TableNames"]:
            return {}
        items = ddb.scan(TableName=self.application, ConsistentRead=True)["Items"]
        return {
            item["leaseKey"]["S"]: {k: next(iter(v.values())) for k, v in item.items()}
            for item in items
        }

    def last_sequence_per_shard(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for put in self.puts:
            if put.shard_id not in last or int(put.sequence_number) > int(last[put.shard_id]):
                last[put.shard_id] = put.sequence_number
        return last

    def read_back(self) -> dict[str, list[Record]]:
        """Every record of every shard, in order, read from the emulator (the reference)."""
        out: dict[str, list[Record]] = {}
        for shard in self.kinesis.list_shards(StreamName=self.stream)["Shards"]:
            shard_id = shard["ShardId"]
            iterator = self.kinesis.get_shard_iterator(
                StreamName=self.stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            records: list[Record] = []
            while iterator:
                response = self.kinesis.get_records(ShardIterator=iterator, Limit=10000)
                for r in response["Records"]:
                    records.append(
                        Record(
                            data=r["Data"],
                            partition_key=r["PartitionKey"],
                            sequence_number=r["SequenceNumber"],
                            sub_sequence_number=0,
                            arrival_ms=int(r["ApproximateArrivalTimestamp"].timestamp() * 1000),
                            shard_id=shard_id,
                        )
                    )
                if not response["Records"] and not response.get("MillisBehindLatest"):
                    break
                iterator = response.get("NextShardIterator")
            out[shard_id] = records
        return out

    def expected_alert_ids(self) -> set[str]:
        """The reference: each shard's records, in order, through the library's processor."""
        ruleset = load_rules(self.config.rules.paths)
        ids: set[str] = set()
        for shard_id, records in self.read_back().items():
            processor = ShardProcessor(
                ruleset,
                identity_field=self.config.rules.identity_field,
                event_time_field=self.config.rules.event_time_field,
                default_sinks=("dynamodb",),
                shard_id=shard_id,
                max_event_time_skew_ms=int(self.config.rules.max_event_time_skew_s * 1000),
            )
            result = processor.process(records)
            assert not result.dead_letters, result.dead_letters[:3]
            ids.update(a.alert_id for a in result.alerts)
        return ids

    def alert_table_ids(self) -> list[str]:
        ddb = self.client("dynamodb")
        ids: list[str] = []
        kwargs: dict[str, Any] = {"TableName": self.resources.alerts_table}
        while True:
            page = ddb.scan(**kwargs)
            ids.extend(item["alert_id"]["S"] for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return ids
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def trace(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        if self.trace_dir.exists():
            for path in sorted(self.trace_dir.glob("*.jsonl")):
                lines.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
        return sorted(lines, key=lambda line: line["t"])

    def processed(self) -> dict[str, list[tuple[str, str]]]:
        """Per worker: every (shard, sequence number) its children were given, in order."""
        out: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for line in self.trace():
            for seq, _sub, _key in line.get("records", []):
                out[line["worker"]].append((line["shard"], seq))
        return out


def make_kcl_env(
    moto_endpoint: str,
    kinesis_endpoint: str,
    name: str,
    tmp: Path,
    *,
    shards: int,
    failover_time_ms: int = 4000,
) -> KclEnv:
    rules_dir = tmp / "rules"
    rules_dir.mkdir()
    (rules_dir / "velocity.py").write_text(VELOCITY_RULE)
    config = Config(
        source=SourceConfig(stream=f"{name}-tx", checkpoint_table=f"{name}-checkpoints"),
        rules=RulesConfig(paths=(str(ROOT / "rules" / "fraud.py"), str(rules_dir))),
        sinks=SinksConfig(dynamodb=DynamoDbSinkConfig(table=f"{name}-alerts")),
        dead_letter=DeadLetterConfig(path=str(tmp / "deadletter.jsonl")),
        # No wall-clock window closes during a test: results must not depend on timing.
        runtime=RuntimeConfig(checkpoint_interval_s=0.5, drain_timeout_s=20, idle_close_s=3600),
        metrics=MetricsConfig(enabled=False),
        kcl=KclConfig(
            application_name=f"{name}-app",
            jars_dir=str(JARS),
            failover_time_ms=failover_time_ms,
            shard_sync_interval_ms=1000,
            idle_time_between_reads_ms=200,
            shutdown_grace_ms=20_000,
            max_records=200,
        ),
    )
    # Sinks and tables on moto (provision also makes an unused stream there).
    config, resources = provision(config, moto_endpoint, shards=1, prefix=f"{name}-")
    config = dataclasses.replace(
        config, aws=dataclasses.replace(config.aws, kinesis_endpoint_url=kinesis_endpoint)
    )
    import boto3

    kinesis = boto3.client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis_endpoint, **LOCAL_CREDENTIALS
    )
    kinesis.create_stream(StreamName=config.source.stream, ShardCount=shards)
    deadline = time.monotonic() + 30
    while (
        kinesis.describe_stream_summary(StreamName=config.source.stream)[
            "StreamDescriptionSummary"
        ]["StreamStatus"]
        != "ACTIVE"
    ):
        assert time.monotonic() < deadline, "stream did not become ACTIVE"
        time.sleep(0.2)
    config_path = tmp / "streamproc.toml"
    config_path.write_text(to_toml(config))
    return KclEnv(name, config, config_path, resources, kinesis, tmp)


class Worker:
    """One ``streamproc kcl`` process (one ECS task)."""

    def __init__(
        self, env: KclEnv, worker_id: str, extra_env: dict[str, str] | None = None
    ) -> None:
        self.env = env
        self.worker_id = worker_id
        self.log_path = env.tmp / f"{worker_id}.log"
        work = env.tmp / f"{worker_id}-work"
        environment = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
            "STREAMPROC__KCL__WORKER_ID": worker_id,
            "STREAMPROC_KCL_WORKER": worker_id,
            "STREAMPROC_KCL_TRACE": str(env.trace_dir),
            "STREAMPROC_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamproc.cli",
                "kcl",
                "--config",
                str(env.config_path),
                "--work-dir",
                str(work),
            ],
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        self.started_at = time.monotonic()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9 of the whole task: the wrapper, the JVM and every child, all at once."""
        pids = [self.process.pid, *descendants(self.process.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
            self.process.wait(timeout=10)
        self._log.close()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: children, grandchildren, ...)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, workers: Iterable[Worker] = ()
) -> float:
    """Poll ``check`` every 0.5 s; return the seconds it took; fail with the workers' logs."""
    start = time.monotonic()
    while not check():
        for worker in workers:
            if not worker.alive():
                raise AssertionError(
                    f"worker {worker.worker_id} exited ({worker.process.returncode}) while "
                    f"waiting for {what}:\n{worker.log()[-4000:]}"
                )
        if time.monotonic() - start > timeout:
            logs = "\n".join(f"--- {w.worker_id}\n{w.log()[-3000:]}" for w in workers)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.5)
    return time.monotonic() - start
