"""Smoke run of the KCL MultiLangDaemon against emulators, everything on 127.0.0.1.

Starts kinesis-mock (plain HTTP, loopback preload) and a moto server (DynamoDB), creates a
2-shard stream, puts N records, fills tools/kcl/example.properties, runs the daemon with
tools/kcl/smoke_processor.py as the per-shard child, waits until every record arrived, prints
the lease table, sends SIGTERM, and checks that the final checkpoints equal each shard's last
sequence number. Stops everything it started. Exit status 0 when all of that held.

    .venv/bin/python tools/kcl/smoke_run.py --kclpy-python /tmp/kclvenv/bin/python \\
        [--jars .cache/kcl-jars/3.1.3] [--records 50] [--fast] [--work /tmp/kcl-smoke]

--kclpy-python: a Python with amazon_kclpy 3.x installed (the child's interpreter).
--fast: pre-create the lease table with TRIM_HORIZON leases and add shardSyncIntervalMillis=1000,
failoverTimeMillis=2000 (first record in ~11 s instead of ~50-105 s; see README.md).
This script itself needs boto3 (the project's .venv has it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KINESIS_MOCK = REPO / "tools" / "kinesis-mock"
KINESIS_MOCK_MAIN = KINESIS_MOCK / "node_modules" / "kinesis-local" / "main.js"
REGION = "us-east-1"
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def say(message: str) -> None:
    print(message, flush=True)


def lease_rows(ddb: Any, table: str) -> list[dict[str, str]]:
    if table not in ddb.list_tables()["TableNames"]:
        return []
    keep = ("leaseKey", "checkpoint", "checkpointSubSequenceNumber", "leaseOwner", "leaseCounter")
    rows = [
        {k: next(iter(v.values())) for k, v in item.items() if k in keep}
        for item in ddb.scan(TableName=table)["Items"]
    ]
    return sorted(rows, key=lambda row: row["leaseKey"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kclpy-python", required=True)
    parser.add_argument("--jars", default=str(REPO / ".cache" / "kcl-jars" / "3.1.3"))
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "kcl-smoke"))  # noqa: S108
    parser.add_argument("--wait", type=float, default=240.0, help="seconds to wait for records")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, cmd: list[str], extra_env: dict[str, str], **kw: Any) -> Any:
        log = (work / f"{name}.log").open("wb")
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd, env={**env, **extra_env}, stdin=subprocess.DEVNULL,
            stdout=kw.pop("stdout", log), stderr=kw.pop("stderr", subprocess.STDOUT), **kw,
        )  # fmt: skip
        procs.append((name, proc))
        return proc

    ok = False
    try:
        kinesis_port, tls_port, moto_port = free_port(), free_port(), free_port()
        start(
            "kinesis-mock",
            ["node", "-r", str(KINESIS_MOCK / "loopback.js"), str(KINESIS_MOCK_MAIN)],
            {
                "KINESIS_MOCK_CERT_PATH": str(KINESIS_MOCK_MAIN.parent / "server.json"),
                "KINESIS_MOCK_PLAIN_PORT": str(kinesis_port),
                "KINESIS_MOCK_TLS_PORT": str(tls_port),
                "LOG_LEVEL": "WARN",
            },
        )
        moto = REPO / ".venv" / "bin" / "moto_server"
        start("moto", [str(moto), "-H", "127.0.0.1", "-p", str(moto_port)], {})
        deadline = time.monotonic() + 30
        while not (answers(kinesis_port) and answers(moto_port)):
            if time.monotonic() > deadline or any(p.poll() is not None for _, p in procs):
                raise RuntimeError(f"emulators did not start: see {work}/*.log")
            time.sleep(0.1)
        kinesis_endpoint = f"http://127.0.0.1:{kinesis_port}"
        dynamodb_endpoint = f"http://127.0.0.1:{moto_port}"
        say(f"kinesis-mock {kinesis_endpoint}, moto {dynamodb_endpoint}")
        kinesis = boto3.client("kinesis", REGION, endpoint_url=kinesis_endpoint, **DUMMY)
        ddb = boto3.client("dynamodb", REGION, endpoint_url=dynamodb_endpoint, **DUMMY)

        stream, app = "kcl-smoke", "kcl-smoke-app"
        kinesis.create_stream(StreamName=stream, ShardCount=2)
        while (
            kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            != "ACTIVE"
        ):
            time.sleep(0.1)
        entries = [
            {"PartitionKey": f"pk-{i}", "Data": f"record-{i}".encode()} for i in range(args.records)
        ]
        response = kinesis.put_records(StreamName=stream, Records=entries)
        assert response.get("FailedRecordCount", 0) == 0, response
        last: dict[str, int] = {}
        for result in response["Records"]:
            shard = result["ShardId"]
            last[shard] = max(last.get(shard, 0), int(result["SequenceNumber"]))
        say(f"put {args.records} records; last sequence number per shard: {last}")

        extra_props = ""
        if args.fast:
            ddb.create_table(
                TableName=app,
                AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            for shard_info in kinesis.list_shards(StreamName=stream)["Shards"]:
                hash_range = shard_info["HashKeyRange"]
                ddb.put_item(
                    TableName=app,
                    Item={
                        "leaseKey": {"S": shard_info["ShardId"]},
                        "checkpoint": {"S": "TRIM_HORIZON"},
                        "checkpointSubSequenceNumber": {"N": "0"},
                        "leaseCounter": {"N": "0"},
                        "ownerSwitchesSinceCheckpoint": {"N": "0"},
                        "startingHashKey": {"S": hash_range["StartingHashKey"]},
                        "endingHashKey": {"S": hash_range["EndingHashKey"]},
                    },
                )
            extra_props = "shardSyncIntervalMillis = 1000\nfailoverTimeMillis = 2000\n"
            say("fast: lease table pre-created with TRIM_HORIZON leases")

        records_file, events_file = work / "records.jsonl", work / "events.jsonl"
        for stale in (records_file, events_file):
            stale.unlink(missing_ok=True)
        template = string.Template((HERE / "example.properties").read_text())
        properties = template.substitute(
            PYTHON=args.kclpy_python,
            PROCESSOR=str(HERE / "smoke_processor.py"),
            STREAM_NAME=stream,
            APPLICATION_NAME=app,
            KINESIS_ENDPOINT=kinesis_endpoint,
            DYNAMODB_ENDPOINT=dynamodb_endpoint,
        )
        properties_file = work / "smoke.properties"
        properties_file.write_text(properties + extra_props)
        cmd = [
            "java", "-cp", f"{args.jars}/*", "software.amazon.kinesis.multilang.MultiLangDaemon",
            "--properties-file", str(properties_file),
            "--log-configuration", str(HERE / "logback-stderr.xml"),
        ]  # fmt: skip
        say("daemon: " + " ".join(cmd))
        t0 = time.monotonic()
        daemon = start(
            "daemon",
            cmd,
            {
                "SMOKE_OUT": str(records_file),
                "SMOKE_EVENTS": str(events_file),
                "SMOKE_BATCH_CHECKPOINT": "0",  # only the final checkpoint moves the lease table
            },
            cwd=str(work),
            stdout=(work / "daemon.stdout").open("wb"),
            stderr=(work / "daemon.log").open("wb"),
        )
        first: float | None = None
        count = 0
        while time.monotonic() < t0 + args.wait and daemon.poll() is None:
            count = len(records_file.read_text().splitlines()) if records_file.exists() else 0
            if count and first is None:
                first = time.monotonic() - t0
            if count >= args.records:
                break
            time.sleep(0.2)
        all_at = time.monotonic() - t0
        first_s = "never" if first is None else f"{first:.1f}s"
        say(f"launch -> first record {first_s}, -> {count}/{args.records} records {all_at:.1f}s")
        time.sleep(2)  # a duplicate would show up here
        data = [json.loads(line)["data"] for line in records_file.read_text().splitlines()]
        missing = {f"record-{i}" for i in range(args.records)} - set(data)
        dups = len(data) - len(set(data))
        say(f"distinct {len(set(data))}, duplicates {dups}, missing {len(missing)}")
        say(f"lease table before SIGTERM: {lease_rows(ddb, app)}")

        t_term = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=60)
        stop_s = time.monotonic() - t_term
        say(f"SIGTERM -> exit status {rc} after {stop_s:.1f}s (143 = 128 + SIGTERM)")
        rows = lease_rows(ddb, app)
        say(f"lease table after SIGTERM: {rows}")
        final = {row["leaseKey"]: row["checkpoint"] for row in rows}
        checkpoints_ok = final == {shard: str(seq) for shard, seq in last.items()}
        say(f"final checkpoints == last sequence numbers: {checkpoints_ok}")
        ok = count == args.records and not missing and dups == 0
        ok = ok and checkpoints_ok and rc in (0, 143)
    finally:
        for name, proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()  # kinesis-mock can hang on keep-alive connections: then kill
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            say(f"stopped {name} (exit {proc.returncode})")
    say("SMOKE OK" if ok else "SMOKE FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
