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
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from streamproc.demo import DemoSpec, encode, transactions
from streamproc.emulators import free_port
from tests.integration.e2e import receive_all
from tests.integration.kcl_harness import (
    JARS,
    KclEnv,
    Worker,
    descendants,
    make_kcl_env,
    wait_for,
)

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
    kcl_env: KclEnv, workers: list[Worker], figures: Any
) -> None:
    kcl_env.seed_leases()
    kcl_env.put(payloads(2000))
    port = free_port()
    workers.append(
        Worker(
            kcl_env,
            "w1",
            {"STREAMPROC__METRICS__ENABLED": "true", "STREAMPROC__METRICS__PORT": str(port)},
        )
    )
    expected = kcl_env.expected_alert_ids()
    assert len(expected) > 50  # the data set has enough of both rules to mean something

    took = wait_for(
        "every shard checkpointed at its last record",
        lambda: checkpoints_reached(kcl_env),
        FIRST_RECORDS_S,
        workers,
    )
    # The alert table's key is alert_id: the table cannot hold duplicates; the FIFO queue can.
    assert set(kcl_env.alert_table_ids()) == expected
    fifo = receive_all(kcl_env.client("sqs"), kcl_env.resources.fifo_queue_url)
    counts = Counter(body["alert_id"] for body in fifo)
    assert set(counts) == expected
    assert max(counts.values()) == 1
    per_rule = Counter(body["rule"] for body in fifo)
    assert per_rule["card_velocity"] > 0 and per_rule["high_value_out_of_state"] > 0
    processed = kcl_env.processed()["w1"]
    assert len(processed) == 2000 and len(set(processed)) == 2000
    # The task's /metrics adds up its four children (one per shard).
    scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
    }
    read = {k[1][0][1]: v for k, v in samples.items() if k[0] == "streamproc_records_read_total"}
    assert len(read) == 4 and sum(read.values()) == 2000
    sent = samples[("streamproc_alerts_total", (("outcome", "sent"), ("sink", "dynamodb")))]
    assert sent == len(expected)
    figures(
        f"\n2,000 records on 4 shards: all checkpointed {took:.1f} s after start; alerts {per_rule}"
    )


def owners(env: KclEnv) -> dict[str, str]:
    return {shard: lease.get("leaseOwner", "") for shard, lease in env.leases().items()}


def is_leader(worker: Worker) -> bool:
    """KCL 3 elects one worker to assign leases; it logs this line while it leads."""
    return f"Worker : {worker.worker_id} is the current leader." in worker.log()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("role", ["follower", "leader"])
def test_kill_9_of_one_worker_moves_its_shards_and_loses_or_duplicates_nothing(
    kcl_env: KclEnv, workers: list[Worker], role: str, figures: Any
) -> None:
    """Two workers share 4 shards; one is killed with SIGKILL (wrapper, JVM and children at
    once) while records flow. The other takes its leases over, rebuilds their window state from
    the stored restore points, and the final alert set equals the reference: no alert lost, none
    duplicated in the DynamoDB table or through the FIFO queue.

    ``role``: kill the worker that is not KCL's lease-assignment leader, or the leader itself
    (then the survivor must first win the leader lock, which KCL 3 holds for about 2 minutes)."""
    kcl_env.seed_leases()
    records = payloads(3000)
    kcl_env.put(records[:1000])
    workers.extend([Worker(kcl_env, "w1"), Worker(kcl_env, "w2")])

    def both_hold_shards() -> bool:
        held = set(owners(kcl_env).values())
        return {"w1", "w2"} <= held

    took = wait_for("each worker to hold a shard", both_hold_shards, FIRST_RECORDS_S, workers)
    held_before = owners(kcl_env)
    figures(f"\nleases after {took:.1f} s: {held_before}")

    # The first worker up may take every lease and read all of the first part before a lease
    # moves, so the second worker is only sure to see records once the second part flows.
    producer = threading.Thread(
        target=kcl_env.put, args=(records[1000:2000],), kwargs={"batch": 50}
    )
    producer.start()
    wait_for(
        "both workers to process records",
        lambda: {"w1", "w2"} <= set(kcl_env.processed()),
        120,
        workers,
    )
    wait_for(
        "records of the second part to be processed",
        lambda: sum(map(len, kcl_env.processed().values())) >= 1500,
        120,
        workers,
    )
    wait_for("a leader to be elected", lambda: any(map(is_leader, workers)), 60, workers)
    leader = next(w for w in workers if is_leader(w))
    victim = leader if role == "leader" else next(w for w in workers if w is not leader)
    survivor = next(w for w in workers if w is not victim)
    victim_shards: set[str] = set()

    def victim_ready() -> bool:
        """The victim holds shards, and for each the daemon's checkpoint and our restore point
        are stored (killed before its first checkpoint, the survivor would read from the start:
        there would be no window state to move). Leases can still move while we wait, so the
        victim's shards are taken at the last check, just before the kill."""
        leases = kcl_env.leases()
        held = {
            shard for shard, lease in leases.items() if lease.get("leaseOwner") == victim.worker_id
        }
        stored = kcl_env.client("dynamodb").scan(TableName=kcl_env.config.source.checkpoint_table)
        restorable = {
            item["shard_id"]["S"] for item in stored["Items"] if "replay_sequence_number" in item
        }
        victim_shards.clear()
        victim_shards.update(held)
        return bool(held) and all(
            leases[shard].get("checkpoint") not in (None, "TRIM_HORIZON", "LATEST")
            and shard in restorable
            for shard in held
        )

    producer.join()
    wait_for("the victim to hold shards with restore points", victim_ready, 60, workers)
    # The last part flows while the victim dies, so the survivor has records of the victim's
    # shards left to read (with the stream drained, the lease table alone could say "done"
    # before the survivor even started on them).
    producer = threading.Thread(target=kcl_env.put, args=(records[2000:],), kwargs={"batch": 50})
    producer.start()
    killed_at = time.time()
    victim.kill()
    producer.join()

    def taken_over() -> bool:
        return all(o == survivor.worker_id for o in owners(kcl_env).values())

    wait_for("the survivor to take every lease", taken_over, 240, [survivor])
    wait_for(
        "every shard checkpointed at its last record",
        lambda: checkpoints_reached(kcl_env),
        120,
        [survivor],
    )

    def survivor_lines(event: str) -> dict[str, dict[str, Any]]:
        """The survivor's first ``event`` line per shard of the victim since the kill."""
        found: dict[str, dict[str, Any]] = {}
        for line in kcl_env.trace():
            if (
                line["worker"] == survivor.worker_id
                and line["shard"] in victim_shards
                and line["event"] == event
                and line["t"] > killed_at
            ):
                found.setdefault(line["shard"], line)
        return found

    # The lease table names the new owner before the survivor's child for the shard starts, and
    # the child notes "restored" once it has rebuilt the shard's windows.
    wait_for(
        "the survivor to restore every shard of the victim",
        lambda: set(survivor_lines("restored")) == victim_shards,
        60,
        [survivor],
    )
    resumed = survivor_lines("initialize")
    assert set(resumed) == victim_shards
    takeover_s = max(line["t"] for line in resumed.values()) - killed_at
    restored = list(survivor_lines("restored").values())
    assert all(line["count"] > 0 for line in restored)  # window state rebuilt

    processed = kcl_env.processed()
    by_victim = set(processed[victim.worker_id])
    by_survivor = processed[survivor.worker_id]
    redelivered = len(by_victim & set(by_survivor))
    assert set(by_survivor) | by_victim == {(p.shard_id, p.sequence_number) for p in kcl_env.puts}

    expected = kcl_env.expected_alert_ids()
    delivered = kcl_env.alert_table_ids()
    assert set(delivered) == expected, (
        f"missing {len(expected - set(delivered))}, unexpected {len(set(delivered) - expected)}"
    )
    fifo = Counter(
        body["alert_id"]
        for body in receive_all(kcl_env.client("sqs"), kcl_env.resources.fifo_queue_url)
    )
    assert set(fifo) == expected
    assert max(fifo.values()) == 1
    eventbridge = Counter(
        body["detail"]["alert_id"]
        for body in receive_all(kcl_env.client("sqs"), kcl_env.resources.eventbridge_inbox_url)
    )
    figures(
        f"killed {victim.worker_id} ({role}) holding {sorted(victim_shards)}; "
        f"{survivor.worker_id} had them all {takeover_s:.1f} s later; "
        f"{redelivered} records re-delivered to the survivor; "
        f"window state rebuilt from {sum(line['count'] for line in restored)} records; "
        f"{len(expected)} alerts, each once in DynamoDB and through FIFO; "
        f"EventBridge (at-least-once) saw {sum(eventbridge.values()) - len(eventbridge)} repeats"
    )


def test_sigterm_checkpoints_every_shard_and_exits_0_within_the_grace_period(
    kcl_env: KclEnv, workers: list[Worker], figures: Any
) -> None:
    """With periodic checkpoints effectively off (every hour), only the shutdown can move the
    lease table's checkpoints to the end: SIGTERM → shutdownRequested in every child → drain
    and checkpoint → the wrapper exits 0 before shutdownGraceMillis (20 s) runs out."""
    kcl_env.seed_leases()
    kcl_env.put(payloads(800))
    worker = Worker(
        kcl_env,
        "w1",
        {
            "STREAMPROC__RUNTIME__CHECKPOINT_INTERVAL_S": "3600",
            "STREAMPROC__KCL__MAX_RECORDS": "25",
        },
    )
    workers.append(worker)
    expected = kcl_env.expected_alert_ids()
    wait_for(
        "all 800 records processed and their alerts delivered",
        lambda: (
            len(kcl_env.processed()["w1"]) == 800 and set(kcl_env.alert_table_ids()) == expected
        ),
        FIRST_RECORDS_S,
        workers,
    )
    assert not checkpoints_reached(kcl_env)  # only each shard's first batch is checkpointed

    def all_quiet() -> bool:
        """Every shard had an empty processRecords call after its last records."""
        last: dict[str, str] = {}
        for line in kcl_env.trace():
            if line["event"] in ("records", "idle"):
                last[line["shard"]] = line["event"]
        return len(last) == 4 and set(last.values()) == {"idle"}

    wait_for("every shard to go quiet", all_quiet, 30, workers)
    before = {shard: lease["checkpoint"] for shard, lease in kcl_env.leases().items()}

    started = time.monotonic()
    status = worker.terminate(timeout=60)
    took = time.monotonic() - started
    assert status == 0, worker.log()[-3000:]
    assert took < 20.0
    assert checkpoints_reached(kcl_env)
    assert "streamproc kcl: stopped in" in worker.log()
    events = Counter(line["event"] for line in kcl_env.trace())
    assert events["shutdown_requested"] == 4
    # Quiet shards still got calls (callProcessRecordsEvenForEmptyRecordList): the runtime's
    # idle window close and checkpoint catch-up depend on them.
    shutdowns = [line for line in kcl_env.trace() if line["event"] == "shutdown_requested"]
    assert all(line["count"] > 0 for line in shutdowns)

    # A deploy: the next task picks up right after the checkpoints, reading nothing twice.
    kcl_env.put(payloads(200, seed_offset=1))
    successor = Worker(kcl_env, "w2")
    workers.append(successor)
    handoff = wait_for(
        "the next task to process the new records",
        lambda: len(kcl_env.processed()["w2"]) == 200,
        FIRST_RECORDS_S,
        [successor],
    )
    assert not set(kcl_env.processed()["w1"]) & set(kcl_env.processed()["w2"])
    figures(
        f"\ncheckpoints before SIGTERM: {before}\nexit status 0 after {took:.1f} s; "
        f"the next task processed new records {handoff:.1f} s after it started, none twice"
    )


def test_split_while_producing_keeps_each_keys_order_and_delivers_every_alert(
    moto_endpoint: str,
    kinesis_mock_endpoint: str,
    unique_name: str,
    tmp_path: Path,
    workers: list[Worker],
    figures: Any,
) -> None:
    """A shard is split while records flow. The daemon starts a child shard only after its parent
    is read to its end and checkpointed (SHARD_END through our shard_ended), so every card's
    records are processed in the order they were written, and every alert is delivered."""
    env = make_kcl_env(moto_endpoint, kinesis_mock_endpoint, unique_name, tmp_path, shards=2)
    env.seed_leases()
    records = payloads(1600)
    env.put(records[:800])
    workers.append(Worker(env, "w1"))
    wait_for("records to flow", lambda: len(env.processed()["w1"]) >= 300, FIRST_RECORDS_S, workers)

    parent = env.kinesis.list_shards(StreamName=env.stream)["Shards"][0]
    low, high = (int(parent["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    env.kinesis.split_shard(
        StreamName=env.stream,
        ShardToSplit=parent["ShardId"],
        NewStartingHashKey=str((low + high) // 2),
    )
    deadline = time.monotonic() + 30
    while (
        env.kinesis.describe_stream_summary(StreamName=env.stream)["StreamDescriptionSummary"][
            "StreamStatus"
        ]
        != "ACTIVE"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    env.put(records[800:])
    children = {p.shard_id for p in env.puts[800:]} - {p.shard_id for p in env.puts[:800]}
    assert len(children) == 2  # the split's two children got records

    def all_done() -> bool:
        leases = env.leases()
        last = env.last_sequence_per_shard()
        return all(
            leases.get(shard, {}).get(
                "checkpoint", "SHARD_END" if shard == parent["ShardId"] else ""
            )
            in (seq, "SHARD_END" if shard == parent["ShardId"] else seq)
            for shard, seq in last.items()
        )

    took = wait_for("every shard done (the parent at SHARD_END)", all_done, 180, workers)

    # Processing order per card equals write order (each card has one partition key).
    written = {(p.shard_id, p.sequence_number): i for i, p in enumerate(env.puts)}
    seen: dict[str, list[int]] = {}
    for line in env.trace():
        for seq, _sub, key in line.get("records", []):
            seen.setdefault(key, []).append(written[(line["shard"], seq)])
    assert sum(map(len, seen.values())) == len(env.puts)
    out_of_order = [key for key, order in seen.items() if order != sorted(order)]
    assert out_of_order == []
    crossing = [
        key
        for key in seen
        if {p.shard_id for p in env.puts if p.partition_key == key} & children
        and parent["ShardId"] in {p.shard_id for p in env.puts if p.partition_key == key}
    ]
    assert crossing  # cards with records in both the parent and a child: the order mattered
    ended = [line for line in env.trace() if line["event"] == "shard_ended"]
    assert [line["shard"] for line in ended] == [parent["ShardId"]]
    first_child = min(
        line["t"]
        for line in env.trace()
        if line["shard"] in children and line["event"] == "initialize"
    )
    assert first_child > ended[0]["t"]

    expected = env.expected_alert_ids()
    assert set(env.alert_table_ids()) == expected
    figures(
        f"\nsplit {parent['ShardId']} into {sorted(children)}; all done {took:.1f} s after; "
        f"{len(crossing)} cards crossed the split in order; {len(expected)} alerts delivered"
    )


@pytest.mark.timeout(600)
def test_a_crashed_child_stops_the_task_and_a_restart_delivers_everything(
    kcl_env: KclEnv, workers: list[Worker], figures: Any
) -> None:
    """A shard's child process dies (kill -9): the daemon shuts the whole task down with a
    non-zero status instead of carrying on without it, so the task is restarted (ECS) and the
    next worker reads again from the last checkpoint: nothing is lost or duplicated in effect.
    (The restarted worker first waits for the dead one's KCL leader lock to expire: ~2 min.)"""
    kcl_env.seed_leases()
    kcl_env.put(payloads(600))
    first = Worker(kcl_env, "w1")
    workers.append(first)
    wait_for(
        "records to flow", lambda: len(kcl_env.processed()["w1"]) >= 200, FIRST_RECORDS_S, workers
    )
    children = [
        pid
        for pid in descendants(first.process.pid)
        if b"connectors.kcl" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(children) == 4
    os.kill(children[0], signal.SIGKILL)
    kcl_env.put(payloads(600, seed_offset=1))
    status = first.process.wait(timeout=120)
    assert status != 0
    assert "the daemon exited with status" in first.log()

    second = Worker(kcl_env, "w2")
    workers.append(second)
    took = wait_for(
        "every shard checkpointed at its last record",
        lambda: checkpoints_reached(kcl_env),
        300,
        [second],
    )
    expected = kcl_env.expected_alert_ids()
    assert set(kcl_env.alert_table_ids()) == expected
    fifo = Counter(
        body["alert_id"]
        for body in receive_all(kcl_env.client("sqs"), kcl_env.resources.fifo_queue_url)
    )
    assert set(fifo) == expected and max(fifo.values()) == 1
    figures(
        f"\nchild killed: task exited with status {status}; the restarted task delivered all "
        f"{len(expected)} alerts and checkpointed every shard {took:.1f} s after it started"
    )
