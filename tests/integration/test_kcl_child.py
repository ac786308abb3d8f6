"""The real child process, ``python -m connectors.kcl``, spoken to as the daemon speaks to it.

Its sinks are on the shared moto server. A rule module that prints (on import and for every
record) must not corrupt stdout, the daemon's protocol channel: the child moves such output to
stderr, and every stdout line stays a protocol message.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import orjson

from streamproc.config import (
    Config,
    DeadLetterConfig,
    DynamoDbSinkConfig,
    MetricsConfig,
    RulesConfig,
    SinksConfig,
    SourceConfig,
)
from streamproc.local import provision
from tests.integration.kcl_harness import ROOT, to_toml

NOISY_RULE = """
from streamproc import predicate_rule

print("rules module imported")


@predicate_rule(name="noisy", select=["tx_id"], key="card_id")
def noisy(tx):
    print("looking at", tx["tx_id"])
    return tx["amount"] > 100
"""


def answer(stdin: IO[str], stdout: IO[str], message: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one action; answer checkpoints; return every stdout message up to the status."""
    stdin.write(json.dumps(message) + "\n")
    stdin.flush()
    seen = []
    while True:
        line = stdout.readline()
        assert line, "the child closed stdout"
        if not line.strip():
            continue  # amazon_kclpy frames each message with blank lines
        reply = json.loads(line)  # anything but protocol JSON here would break the daemon
        seen.append(reply)
        if reply["action"] == "status":
            return seen
        assert reply["action"] == "checkpoint"
        stdin.write(json.dumps({**reply, "action": "checkpoint"}) + "\n")
        stdin.flush()


def test_the_child_keeps_stdout_for_the_protocol_and_delivers(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "noisy.py").write_text(NOISY_RULE)
    config = Config(
        source=SourceConfig(stream=f"{unique_name}-tx", checkpoint_table=f"{unique_name}-cp"),
        rules=RulesConfig(paths=(str(rules),)),
        sinks=SinksConfig(dynamodb=DynamoDbSinkConfig(table=f"{unique_name}-alerts")),
        dead_letter=DeadLetterConfig(path=str(tmp_path / "dead.jsonl")),
        metrics=MetricsConfig(enabled=False),
    )
    config, resources = provision(config, moto_endpoint, shards=1, prefix=f"{unique_name}-")
    path = tmp_path / "streamproc.toml"
    path.write_text(to_toml(config))
    child = subprocess.Popen(
        [sys.executable, "-m", "connectors.kcl", "--config", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "PATH": ""},
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        answer(
            child.stdin,
            child.stdout,
            {
                "action": "initialize",
                "shardId": "shardId-000000000000",
                "sequenceNumber": "TRIM_HORIZON",
                "subSequenceNumber": 0,
            },
        )
        records = [
            {
                "action": "record",
                "data": base64.b64encode(
                    orjson.dumps({"tx_id": f"tx-{i}", "card_id": "c1", "amount": 50 * i})
                ).decode(),
                "partitionKey": "c1",
                "sequenceNumber": str(1000 + i),
                "subSequenceNumber": 0,
                "approximateArrivalTimestamp": 1_780_000_000_000,
            }
            for i in range(5)
        ]
        seen = answer(
            child.stdin,
            child.stdout,
            {"action": "processRecords", "records": records, "millisBehindLatest": 0},
        )
        checkpoints = [m for m in seen if m["action"] == "checkpoint"]
        assert checkpoints[-1]["sequenceNumber"] == "1004"
        answer(child.stdin, child.stdout, {"action": "shutdownRequested"})
        child.stdin.close()
        assert child.wait(timeout=30) == 0
        stderr = child.stderr.read() if child.stderr else ""
        assert "rules module imported" in stderr and "looking at tx-4" in stderr
        ddb = resources.client("dynamodb")
        items = ddb.scan(TableName=resources.alerts_table)["Items"]
        assert len(items) == 2  # amounts 150 and 200
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
