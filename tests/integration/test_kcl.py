"""``streamproc kcl`` with the real KCL MultiLangDaemon (Java, KCL 3.1.3 jars from
``tools/kcl/fetch-jars``), Kinesis from kinesis-mock and DynamoDB + sinks from moto, all on
127.0.0.1 and started by fixtures. Every worker is a real ``streamproc kcl`` process.

kinesis-mock writes ~300 records/s, so volumes stay at a few thousand records. The lease table is
seeded with one TRIM_HORIZON lease per shard (see ``KclEnv.seed_leases``) and shard sync runs
every second, so the first records arrive in ~10 s instead of ~50-100 s.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc.demo import DemoSpec, encode, transactions
from tests.integration.e2e import receive_all
from tests.integration.kcl_harness import JARS, KclEnv, Worker, make_kcl_env, wait_for

pytestmark = pytest.mark.slow

# Small card population and frequent bursts: velocity alerts (window state) in a few thousand
# records.
SPEC = DemoSpec(seed=7, cards=400, burst_share=0.02)
FIRST_RECORDS_S = 120.0


@pytest.fixture(scope="module", autouse=True)
def _daemon_prerequisites() -> None:
    missing = []
    if shutil.which("java") is None:
        missing.append("java is not on PATH")
    if not (JARS / "amazon-kinesis-client-multilang-3.1.3.jar").is_file():
        missing.append(f"no KCL jars in {JARS}: run `make kcl-jars` (tools/kcl/fetch-jars)")
    if missing:
        # `make test` fetches the jars first: in CI their absence is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("; ".join(missing))


@pytest.fixture
def kcl_env(
    moto_endpoint: str, kinesis_mock_endpoint: str, unique_name: str, tmp_path: Path
) -> KclEnv:
    return make_kcl_env(moto_endpoint, kinesis_mock_endpoint, unique_name, tmp_path, shards=4)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def payloads(count: int, seed_offset: int = 0) -> list[tuple[bytes, str]]:
    spec = SPEC if not seed_offset else DemoSpec(seed=SPEC.seed + seed_offset, cards=400)
    return [encode(tx) for tx in transactions(spec, count)]


def checkpoints_reached(env: KclEnv) -> bool:
    leases = env.leases()
    return all(
        leases.get(shard, {}).get("checkpoint") == seq
        for shard, seq in env.last_sequence_per_shard().items()
    )


def test_one_worker_delivers_every_alert_and_checkpoints_each_shards_last_record(
    kcl_env: KclEnv, workers: list[Worker]
) -> None:
    kcl_env.seed_leases()
    kcl_env.put(payloads(2000))
    workers.append(Worker(kcl_env, "w1"))
    expected = kcl_env.expected_alert_ids()
    assert len(expected) > 50  # the data set has enough of both rules to mean something

    took = wait_for(
        "every shard checkpointed at its last record",
        lambda: checkpoints_reached(kcl_env),
        FIRST_RECORDS_S,
        workers,
    )
    delivered = kcl_env.alert_table_ids()
    assert set(delivered) == expected
    assert len(delivered) == len(expected)
    fifo = receive_all(kcl_env.client("sqs"), kcl_env.resources.fifo_queue_url)
    counts = Counter(body["alert_id"] for body in fifo)
    assert set(counts) == expected
    assert max(counts.values()) == 1
    per_rule = Counter(body["rule"] for body in fifo)
    assert per_rule["card_velocity"] > 0 and per_rule["high_value_out_of_state"] > 0
    processed = kcl_env.processed()["w1"]
    assert len(processed) == 2000 and len(set(processed)) == 2000
    print(
        f"\n2,000 records on 4 shards: all checkpointed {took:.1f} s after start; alerts {per_rule}"
    )
    time.sleep(0)
