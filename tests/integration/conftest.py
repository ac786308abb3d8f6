"""Fixtures for integration tests: Kinesis helpers, checkpoint tables, and kinesis-mock.

kinesis-mock (npm ``kinesis-local``) is installed by ``npm ci --prefix tools/kinesis-mock`` (CI
runs it). It listens on every interface unless told otherwise and has no host setting, so
``tools/kinesis-mock/loopback.js`` is preloaded to pin every server onto 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from connectors.aws import make_client
from connectors.checkpoints import DynamoDbCheckpointStore, ensure_table
from streamproc.emulators import LOCAL_CREDENTIALS, LOCAL_REGION, free_port
from streamproc.interfaces import ShardReader
from streamproc.records import Record

# botocore retries off: the poller backs off by itself, and every injected fault is seen.
ONE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})

KINESIS_MOCK_DIR = Path(__file__).resolve().parents[2] / "tools" / "kinesis-mock"
KINESIS_MOCK_MAIN = KINESIS_MOCK_DIR / "node_modules" / "kinesis-local" / "main.js"
START_TIMEOUT_S = 30.0


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kinesis_mock_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kinesis-mock server on 127.0.0.1 (plain HTTP), started once per session."""
    if not KINESIS_MOCK_MAIN.exists():
        # In CI `make test` installs it: a missing install there is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "kinesis-mock is not installed: run `npm ci --prefix tools/kinesis-mock` "
            f"(looked for {KINESIS_MOCK_MAIN})"
        )
    node = shutil.which("node")
    if node is None:
        pytest.fail("kinesis-mock is installed but `node` is not on PATH")
    plain_port, tls_port = free_port(), free_port()
    env = {
        **os.environ,
        "KINESIS_MOCK_CERT_PATH": str(KINESIS_MOCK_MAIN.parent / "server.json"),
        "KINESIS_MOCK_PLAIN_PORT": str(plain_port),
        "KINESIS_MOCK_TLS_PORT": str(tls_port),
        "LOG_LEVEL": "WARN",
    }
    log_path = tmp_path_factory.mktemp("kinesis-mock") / "kinesis-mock.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [node, "-r", str(KINESIS_MOCK_DIR / "loopback.js"), str(KINESIS_MOCK_MAIN)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(plain_port):
            if process.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"kinesis-mock did not start on port {plain_port}:\n{output}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{plain_port}"
    finally:
        # Its graceful shutdown waits for open keep-alive connections (boto3 pools them), so
        # SIGTERM alone can hang; it keeps no state on disk, so SIGKILL after a moment is safe.
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class Put:
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


class KinesisKit:
    """A real boto3 Kinesis client for one emulator, with botocore's retries off as the poller
    wants it, plus the chores tests repeat: streams, PutRecords, driving readers."""

    def __init__(self, endpoint: str) -> None:
        self.client = make_client(
            "kinesis",
            region=LOCAL_REGION,
            endpoint_url=endpoint,
            config=ONE_ATTEMPT,
            **LOCAL_CREDENTIALS,
        )

    def create_stream(self, name: str, shards: int) -> list[dict[str, Any]]:
        self.client.create_stream(StreamName=name, ShardCount=shards)
        self.wait_active(name)
        listed: list[dict[str, Any]] = self.client.list_shards(StreamName=name)["Shards"]
        return listed

    def wait_active(self, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            summary = self.client.describe_stream_summary(StreamName=name)
            status = summary["StreamDescriptionSummary"]["StreamStatus"]
            if status == "ACTIVE":
                return
            assert time.monotonic() < deadline, f"stream {name} not ACTIVE: {status}"
            time.sleep(0.1)

    def split(self, name: str, shard: dict[str, Any]) -> None:
        self.client.split_shard(
            StreamName=name,
            ShardToSplit=shard["ShardId"],
            NewStartingHashKey=self.middle_hash_key(shard),
        )
        self.wait_active(name)

    def put(
        self, name: str, entries: Sequence[tuple[str, bytes]], hash_key: str | None = None
    ) -> list[Put]:
        """PutRecords in batches of 500; ``hash_key`` pins every entry to one shard."""
        puts: list[Put] = []
        for start in range(0, len(entries), 500):
            chunk = entries[start : start + 500]
            request = [{"PartitionKey": pk, "Data": data} for pk, data in chunk]
            for entry in request if hash_key is not None else []:
                entry["ExplicitHashKey"] = hash_key
            response = self.client.put_records(StreamName=name, Records=request)
            assert response.get("FailedRecordCount", 0) == 0, response
            for result, (pk, data) in zip(response["Records"], chunk, strict=True):
                puts.append(Put(result["ShardId"], result["SequenceNumber"], pk, data))
        return puts

    @staticmethod
    def middle_hash_key(shard: dict[str, Any]) -> str:
        hash_range = shard["HashKeyRange"]
        return str((int(hash_range["StartingHashKey"]) + int(hash_range["EndingHashKey"])) // 2)

    @staticmethod
    def read_exactly(
        readers: Sequence[ShardReader], count: int, timeout: float = 20.0, settle: float = 0.3
    ) -> dict[str, list[Record]]:
        """Drive the readers until ``count`` records came, then a little longer: no extra."""
        got: dict[str, list[Record]] = {reader.shard_id: [] for reader in readers}
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while settle_until is None or time.monotonic() < settle_until:
            for reader in readers:
                batch = reader.next_batch()
                if batch is not None:
                    assert batch.shard_id == reader.shard_id
                    got[reader.shard_id].extend(batch.records)
            total = sum(len(records) for records in got.values())
            assert total <= count, f"read {total} records, expected {count}"
            if total == count and settle_until is None:
                settle_until = time.monotonic() + settle
            assert time.monotonic() < deadline, f"read {total} of {count} records"
            time.sleep(0.002)
        return got

    @staticmethod
    def prime(readers: Sequence[ShardReader]) -> None:
        """Call each reader until it made a GetRecords call (its iterator exists)."""
        for reader in readers:
            deadline = time.monotonic() + 5
            while reader.next_batch() is None:
                assert time.monotonic() < deadline
                time.sleep(0.002)


@pytest.fixture
def kinesis_kit(moto_endpoint: str) -> KinesisKit:
    return KinesisKit(moto_endpoint)


@pytest.fixture
def kinesis_mock_kit(kinesis_mock_endpoint: str) -> KinesisKit:
    return KinesisKit(kinesis_mock_endpoint)


@pytest.fixture
def checkpoint_store(aws_client: Any, unique_name: str) -> DynamoDbCheckpointStore:
    """A fresh checkpoint table on the moto server."""
    ddb = aws_client("dynamodb")
    ensure_table(ddb, f"{unique_name}-checkpoints")
    return DynamoDbCheckpointStore(ddb, f"{unique_name}-checkpoints")


# Figures the KCL tests measured (takeover time, re-delivered records, ...), printed at the end
# of the run so CI logs show them without -s.
FIGURES: list[str] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Any:
    def add(text: str) -> None:
        FIGURES.append(f"{request.node.name}: {text.strip()}")

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in FIGURES:
            terminalreporter.write_line(line)
