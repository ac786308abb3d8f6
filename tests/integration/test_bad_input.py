"""Bad input never stops a shard: every bad record is dead-lettered with its reason and position,
and the good records around it are processed. Both dead-letter destinations are exercised."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc.config import DeadLetterConfig, LimitsConfig
from streamproc.demo import DemoSpec, encode, transactions
from tests.integration.e2e import (
    alert_ids_at_destinations,
    all_settled,
    checkpoints,
    expected_alerts,
    last_sequence_per_shard,
    make_env,
    receive_all,
    run_until,
    stop,
)


def bad_records() -> list[tuple[str, bytes]]:
    deep: Any = {"leaf": 1}
    for _ in range(40):
        deep = {"x": deep}
    missing = next(
        t for t in transactions(DemoSpec(seed=5), 10_000)
        if t["amount"] > 2000 and t["state"] != t["home_state"]
    )  # fmt: skip
    del missing["home_state"]
    return [
        ("invalid JSON", b'{"tx_id": "broken", "amount": '),
        ("not a JSON object", b"[1, 2, 3]"),
        ("missing field 'home_state'", orjson.dumps(missing)),
        ("record too large", orjson.dumps({"tx_id": "big", "blob": "x" * 5000})),
        ("nesting too deep", orjson.dumps({"tx_id": "deep", "payload": deep})),
        ("invalid JSON", b"\xff\xfe not utf-8"),
    ]


@pytest.mark.parametrize("destination", ["file", "sqs"])
def test_bad_records_are_dead_lettered_and_good_ones_flow(
    moto_endpoint: str, unique_name: str, tmp_path: Path, destination: str
) -> None:
    env = make_env(
        moto_endpoint,
        unique_name,
        tmp_path,
        shards=1,
        limits=LimitsConfig(max_record_bytes=4096, max_nesting_depth=20),
    )
    if destination == "sqs":
        sqs = env.client("sqs")
        url = sqs.create_queue(QueueName=f"{unique_name}-dead-letters")["QueueUrl"]
        env.config = dataclasses.replace(
            env.config, dead_letter=DeadLetterConfig(kind="sqs", queue_url=url)
        )
    good = list(transactions(DemoSpec(seed=3), 600))
    bad = bad_records()
    # interleave: 100 good records, one bad, 100 good, ...
    payloads: list[tuple[bytes, str]] = []
    for i, (_, data) in enumerate(bad):
        payloads.extend(encode(t) for t in good[i * 100 : (i + 1) * 100])
        payloads.append((data, f"bad-{i}"))
    sequence_numbers = env.put_raw(payloads)
    bad_sequences = [
        seq for seq, (data, _) in zip(sequence_numbers, payloads, strict=True)
        if any(data == b for _, b in bad)
    ]  # fmt: skip

    app = env.app()
    run_until(app.runtime, all_settled(len(payloads)))
    stop(app.runtime)

    if destination == "sqs":
        letters = receive_all(env.client("sqs"), env.config.dead_letter.queue_url)
    else:
        letters = env.dead_letters()
    assert [d["sequence_number"] for d in letters] == bad_sequences
    for letter, (reason, data) in zip(letters, bad, strict=True):
        assert letter["kind"] == "record"
        assert reason in letter["reason"], letter["reason"]
        assert letter["shard_id"] == "shardId-000000000000"
        # the original bytes are kept, so the record can be fixed and replayed
        assert base64.b64decode(letter["data_base64"]) == data

    assert app.runtime.totals.records_read == len(payloads)
    assert app.runtime.totals.records_dead_lettered == len(bad)
    expected = expected_alerts(good)["HIGH"]
    assert sorted(alert_ids_at_destinations(env)["dynamodb"]) == sorted(expected)
    assert checkpoints(env) == last_sequence_per_shard(env)
