"""End to end on the local emulator: producer → Kinesis → ``streamproc run`` → sinks → checkpoint.

The set-up is the one ``streamproc run --local`` makes: moto's server in this process on
127.0.0.1 (:func:`streamproc.emulators.start_moto`), a 4-shard stream, the checkpoint table and
the four alert destinations (:func:`streamproc.local.provision`), and the service built by
:func:`streamproc.app.build_app` with the default configuration: the shipped ``rules/``
(``fraud.py``, ``velocity.py``, ``fraud_model.py``: 4 rules), every sink enabled (EventBridge,
SNS, SQS FIFO, DynamoDB), one GetRecords call per shard per 200 ms, 50 ms sink linger, a
checkpoint every 2 s. The demo :class:`~streamproc.demo.Producer` writes the first records of the
benchmark data set, paced, from a thread of this process, while :meth:`Runtime.run` runs the loop
until every record is read and every alert acknowledged; then it drains and checkpoints.

Two runs, two rows: **saturated**, ``STREAMPROC_BENCH_E2E_RECORDS`` records (default 20,000)
offered at ``STREAMPROC_BENCH_E2E_RATE`` (default 10,000/s, the design target), sustained
records/s = records / (first arrival → last record read and every alert acknowledged); and
**latency**, ``STREAMPROC_BENCH_E2E_LATENCY_RATE`` (default 250/s) for 15 s, a rate sustained
here, so that latency does not grow with a backlog.

**Latency** is per alert delivery (one alert at one sink), from the record's
``ApproximateArrivalTimestamp`` (stamped in ms by the emulator when PutRecords stored it, on this
machine's clock) to the runtime having the sink's acknowledgement (the ``flush`` that returned
the outcome). Arrival, not our receipt, because a user waits from there and the design target
says so: it includes the wait in the shard for the next poll, up to the 200 ms poll interval
(AWS allows 5 GetRecords calls/s/shard). Receipt → ack (our runtime's part) is reported too.
The runtime is not changed: thin timing proxies wrap its source, shard readers, processors and
sinks (a clock read per batch and per flush, a dict entry per record).

**The limit** is named from measurements on the same emulator and records: the emulator alone
(PutRecords unpaced; GetRecords draining the stream, no processing; each sink's call on empty
destinations), our shard processor alone (in memory), where the loop's wall time went during the
run (Kinesis reads, rules, sink calls, checkpoints, idle), and the CPU time of the loop's thread
against the whole process (moto serves requests from threads of this process).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import dataset
from benchmarks.summary import report
from connectors.aws import make_client
from connectors.checkpoints import DynamoDbCheckpointStore
from streamproc.app import build_app, build_parts
from streamproc.config import Config, DeadLetterConfig, MetricsConfig, RulesConfig, SourceConfig
from streamproc.demo import Producer
from streamproc.emulators import LOCAL_CREDENTIALS, MotoServer
from streamproc.interfaces import Delivery, Outcome, ShardReader, Sink
from streamproc.local import LocalResources, provision
from streamproc.metrics import Totals
from streamproc.processor import ShardProcessor
from streamproc.records import Alert, Position, Record, RecordBatch
from streamproc.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
BATCH = 1_000  # records per in-memory processor call, like one GetRecords batch
LATENCY_RUN_S = 15
RUN_TIMEOUT_S = 300.0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default)).replace("_", "")
    if not text.isdigit() or int(text) < 1:
        raise SystemExit(f"{name} must be a whole number of at least 1, not {text!r}")
    return int(text)


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keyed_lines() -> list[tuple[bytes, str]]:
    """(JSON bytes, partition key = card) of the data set's first records (the generator is
    sequential: the same as the full set's first), at most ``STREAMPROC_BENCH_RECORDS``."""
    count = min(dataset.record_count(), _env_int("STREAMPROC_BENCH_E2E_RECORDS", 20_000))
    return [(line, str(orjson.loads(line)["card_id"])) for line in dataset.lines(count)]


def local_env(endpoint: str, tmp: Path) -> tuple[Config, LocalResources]:
    """The default configuration with unique names, provisioned as ``run --local`` does."""
    name = "bench" + uuid.uuid4().hex[:8]
    config = Config(
        source=SourceConfig(stream=f"{name}-tx", checkpoint_table=f"{name}-checkpoints"),
        rules=RulesConfig(paths=(str(ROOT / "rules"),)),
        dead_letter=DeadLetterConfig(path=str(tmp / f"{name}-deadletter.jsonl")),
        metrics=MetricsConfig(enabled=False),
    )
    dynamodb = dataclasses.replace(config.sinks.dynamodb, table=f"{name}-alerts")
    config = dataclasses.replace(config, sinks=dataclasses.replace(config.sinks, dynamodb=dynamodb))
    return provision(config, endpoint, shards=SHARDS, prefix=f"{name}-")


# ------------------------------------------------------------------ each part alone


@dataclass
class Alone:
    put_per_s: float = 0.0  # moto PutRecords, 500 records per call, unpaced
    get_per_s: float = 0.0  # moto GetRecords, 1,000 per call, no pause, no processing
    processing_per_s: float = 0.0  # our shard processor in memory
    sink_ms_per_call: dict[str, float] = field(default_factory=dict)  # empty destinations


def kinesis_alone(endpoint: str, keyed: Sequence[tuple[bytes, str]], alone: Alone) -> None:
    """The emulator's Kinesis alone, on the same records and shard count as the live run."""
    client = make_client("kinesis", region="us-east-1", endpoint_url=endpoint, **LOCAL_CREDENTIALS)
    stream = "bench" + uuid.uuid4().hex[:8] + "-alone"
    client.create_stream(StreamName=stream, ShardCount=SHARDS)
    client.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    started = time.perf_counter()
    assert Producer(client, stream).send(iter(keyed)) == len(keyed)
    alone.put_per_s = len(keyed) / (time.perf_counter() - started)

    got = 0
    started = time.perf_counter()
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=1000)
            got += len(response["Records"])
            if not response["Records"] and not response.get("MillisBehindLatest"):
                break
            iterator = response.get("NextShardIterator")
    alone.get_per_s = got / (time.perf_counter() - started)
    assert got == len(keyed)
    client.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def processing_alone(
    config: Config, keyed: Sequence[tuple[bytes, str]], alone: Alone
) -> list[Alert]:
    """Our shard processor (decode + the 4 rules) over the same records in memory."""
    processor = build_parts(config, local=True).processor_factory(dataset.SHARD)
    records = [
        Record(data, key, str(n + 1), 0, dataset.START_MS + n // 10, dataset.SHARD)
        for n, (data, key) in enumerate(keyed)
    ]
    alerts: list[Alert] = []
    started = time.perf_counter()
    for batch in dataset.batches(records, BATCH):
        alerts += processor.process(batch).alerts
    alone.processing_per_s = len(records) / (time.perf_counter() - started)
    return alerts


def sinks_alone(endpoint: str, tmp: Path, alerts: Sequence[Alert], alone: Alone) -> None:
    """Each sink's batch call alone: 50 real alerts into fresh, empty destinations."""
    config, _ = local_env(endpoint, tmp)
    parts = build_parts(config, local=True)
    for name, sink in parts.sinks.items():
        for n, alert in enumerate(alerts[:50]):
            sink.add(Delivery(n, dataclasses.replace(alert, sinks=(name,))))
        for _ in range(100):  # a sink never fails on moto; the bound only guards the loop
            if not sink.pending():
                break
            sink.flush(force=True)
        seconds = getattr(sink, "take_batch_seconds")()  # noqa: B009 - not in the protocol
        alone.sink_ms_per_call[name] = ms_per_call(seconds)
        sink.close()


# ------------------------------------------------------------------ timing proxies


@dataclass
class LoopTime:
    """Where the runtime loop's time went (seconds) and what it saw."""

    turns: float = 0.0  # inside run_once (everything but the idle sleeps)
    read: float = 0.0  # next_batch: GetShardIterator / GetRecords and record conversion
    reads_with_data: int = 0
    reads_empty: int = 0
    process: float = 0.0  # ShardProcessor.process: decode + rules
    flush: float = 0.0  # Sink.flush: the sinks' service calls
    checkpoint: float = 0.0  # Source.checkpoint: DynamoDB writes
    checkpoints: int = 0
    discover: float = 0.0  # ListShards and loading checkpoints
    # (shard, sequence number) -> (ApproximateArrivalTimestamp ms, perf_counter at receipt)
    arrivals: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    last_receipt: float = 0.0
    # per sink: (arrival → ack ms, receipt → ack ms) of each delivery decided
    latencies: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    unmatched: int = 0  # acks of alerts from no record seen here (window closes)
    last_ack: float = 0.0
    # per sink: durations of its service calls (from the sink's own take_batch_seconds)
    sink_calls: dict[str, list[float]] = field(default_factory=dict)


class _Proxy:
    """Forwards what it does not time to the wrapped part."""

    def __init__(self, inner: Any, times: LoopTime) -> None:
        self._inner = inner
        self._times = times

    def __getattr__(self, name: str) -> Any:  # shard_id, finished, close, failed_attempts, ...
        return getattr(self._inner, name)


class TimedReader(_Proxy):
    def next_batch(self) -> RecordBatch | None:
        started = time.perf_counter()
        batch: RecordBatch | None = self._inner.next_batch()
        now = time.perf_counter()
        times = self._times
        times.read += now - started
        if batch is not None and batch.records:
            times.reads_with_data += 1
            arrivals = times.arrivals
            for r in batch.records:
                arrivals[(r.shard_id, r.sequence_number)] = (r.arrival_ms, now)
            times.last_receipt = now
        elif batch is not None:
            times.reads_empty += 1
        return batch


class TimedSource(_Proxy):
    def poll_assignments(self) -> list[ShardReader]:
        started = time.perf_counter()
        readers = self._inner.poll_assignments()
        self._times.discover += time.perf_counter() - started
        return [TimedReader(r, self._times) for r in readers]

    def checkpoint(self, shard_id: str, position: Position | None, **kw: Any) -> None:
        started = time.perf_counter()
        self._inner.checkpoint(shard_id, position, **kw)
        self._times.checkpoint += time.perf_counter() - started
        self._times.checkpoints += 1


class TimedProcessor(_Proxy):
    def process(self, records: Sequence[Record]) -> Any:
        started = time.perf_counter()
        result = self._inner.process(records)
        self._times.process += time.perf_counter() - started
        return result


class TimedSink(_Proxy):
    """Times ``flush`` and turns each outcome into the latency of its delivery."""

    def __init__(self, name: str, sink: Sink, times: LoopTime) -> None:
        super().__init__(sink, times)
        self.name = name
        self._records: dict[int, tuple[str, str]] = {}  # delivery id -> (shard, sequence)
        self._latencies = times.latencies.setdefault(name, [])
        self._calls = times.sink_calls.setdefault(name, [])

    def add(self, delivery: Delivery) -> None:
        alert = delivery.alert
        self._records[delivery.delivery_id] = (alert.shard_id, alert.sequence_number)
        self._inner.add(delivery)

    def flush(self, *, force: bool = False) -> list[Outcome]:
        started = time.perf_counter()
        outcomes: list[Outcome] = self._inner.flush(force=force)
        now = time.perf_counter()
        times = self._times
        times.flush += now - started
        if outcomes:
            now_ms = time.time() * 1000
            for outcome in outcomes:
                seen = times.arrivals.get(self._records.pop(outcome.delivery_id))
                if seen is None:
                    times.unmatched += 1
                    continue
                arrival_ms, received = seen
                self._latencies.append((now_ms - arrival_ms, (now - received) * 1000))
            times.last_ack = now
        return outcomes

    def take_batch_seconds(self) -> list[float]:  # the runtime's sink latency metric, observed
        take = getattr(self._inner, "take_batch_seconds", None)
        seconds: list[float] = list(take()) if callable(take) else []
        self._calls.extend(seconds)
        return seconds


def instrument(runtime: Runtime) -> LoopTime:
    """Install the timing proxies on a runtime that has not run yet."""
    times = LoopTime()
    runtime.source = TimedSource(runtime.source, times)
    make_processor = runtime.processor_factory

    def processor_factory(shard_id: str) -> ShardProcessor:
        return TimedProcessor(make_processor(shard_id), times)  # type: ignore[return-value]

    runtime.processor_factory = processor_factory
    runtime.sinks = {n: TimedSink(n, s, times) for n, s in runtime.sinks.items()}
    run_once = runtime.run_once

    def timed_run_once() -> bool:
        started = time.perf_counter()
        busy = run_once()
        times.turns += time.perf_counter() - started
        return busy

    runtime.run_once = timed_run_once  # type: ignore[method-assign]
    return times


# ------------------------------------------------------------------ the live run


@dataclass
class Live:
    records: int
    offered: int
    produced_per_s: float
    sustained_per_s: float
    span_s: float  # first arrival → last record read and every alert acknowledged
    loop_s: float  # run() until every record was read and every alert acknowledged
    drain_s: float  # then: drain, final checkpoint, close
    # CPU seconds while the loop ran: its thread (ours, boto3's client side included), the
    # producer's (whole send), the process's: the rest is moto (and the DynamoDB sink's pool).
    loop_cpu_s: float
    producer_cpu_s: float
    process_cpu_s: float
    times: LoopTime
    totals: Totals

    def latencies(self, sink: str | None = None) -> tuple[list[float], list[float]]:
        """(arrival → ack, receipt → ack) in ms of every delivery, or of one sink's."""
        chosen = [self.times.latencies[sink]] if sink else self.times.latencies.values()
        pairs = [pair for per_sink in chosen for pair in per_sink]
        return [a for a, _ in pairs], [r for _, r in pairs]

    @property
    def busy(self) -> float:
        """Share of the loop's wall time spent in its turns (not in idle sleeps)."""
        return self.times.turns / self.loop_s


def live_run(
    config: Config, resources: LocalResources, keyed: Sequence[tuple[bytes, str]], rate: int
) -> Live:
    runtime = build_app(config, local=True, serve_metrics=False).runtime
    times = instrument(runtime)
    producer = Producer(resources.client("kinesis"), resources.stream, rate=rate)
    first_put = threading.Event()
    produced: list[float] = []  # wall seconds, thread CPU seconds of the whole send
    errors: list[BaseException] = []

    def produce() -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            producer.send(iter(keyed), progress=lambda _sent: first_put.set())
        except BaseException as exc:  # re-raised below, not lost in the thread
            errors.append(exc)
        finally:
            produced.extend((time.perf_counter() - started, time.thread_time() - cpu))
            first_put.set()

    thread = threading.Thread(target=produce, name="bench-producer", daemon=True)
    thread.start()
    # Read once the first records are in: a first read that finds nothing parks each reader for
    # its idle interval (1 s) and would charge that start-up wait to the first records.
    first_put.wait(timeout=30)
    done_at: list[float] = []  # perf_counter, loop thread CPU, process CPU

    def stop_when_done(totals: Totals) -> None:  # called by the loop, in its thread
        if errors or (totals.records_read >= len(keyed) and runtime.pending_deliveries == 0):
            done_at.extend((time.perf_counter(), time.thread_time(), time.process_time()))
            runtime.stop()

    started, loop_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
    totals = runtime.run(duration=RUN_TIMEOUT_S, on_tick=stop_when_done, tick_interval=0.02)
    ended = time.perf_counter()
    thread.join(timeout=30)
    if errors:
        raise errors[0]
    assert done_at, f"not done after {RUN_TIMEOUT_S:.0f} s: {totals}"
    assert totals.records_read == len(keyed)
    assert totals.undecided_at_stop == 0 and not totals.checkpoint_failed_at_stop
    check_checkpoints(config, resources, times)

    first_arrival_ms = min(arrival for arrival, _ in times.arrivals.values())
    last_event = max(times.last_ack, times.last_receipt)  # perf_counter → wall clock ms:
    last_event_ms = time.time() * 1000 - (time.perf_counter() - last_event) * 1000
    span_s = (last_event_ms - first_arrival_ms) / 1000
    return Live(
        records=len(keyed),
        offered=rate,
        produced_per_s=len(keyed) / produced[0],
        sustained_per_s=len(keyed) / span_s,
        span_s=span_s,
        loop_s=done_at[0] - started,
        drain_s=ended - done_at[0],
        loop_cpu_s=done_at[1] - loop_cpu,
        producer_cpu_s=produced[1],
        process_cpu_s=done_at[2] - process_cpu,
        times=times,
        totals=totals,
    )


def check_checkpoints(config: Config, resources: LocalResources, times: LoopTime) -> None:
    """Every shard's stored checkpoint is its last record: the run ended fully settled."""
    last: dict[str, int] = {}
    for shard_id, sequence in times.arrivals:
        last[shard_id] = max(last.get(shard_id, 0), int(sequence))
    store = DynamoDbCheckpointStore(resources.client("dynamodb"), config.source.checkpoint_table)
    for shard_id, last_sequence in last.items():
        stored = store.load(resources.stream, shard_id)
        assert stored is not None and stored.position is not None, shard_id
        assert stored.position.sequence_number == last_sequence, (shard_id, stored, last_sequence)


# ------------------------------------------------------------------ figures and verdict


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


def ms_per_call(seconds: Sequence[float]) -> float:
    return 1000 * sum(seconds) / len(seconds) if seconds else float("nan")


def loop_shares(live: Live) -> dict[str, float]:
    """The loop's wall time by part, as shares of the whole run."""
    t = live.times
    moto_calls = t.read + t.flush + t.checkpoint + t.discover
    return {
        "moto GetRecords": t.read,
        "moto sink calls": t.flush,
        "moto checkpoint writes": t.checkpoint + t.discover,
        "our rule processing": t.process,
        "our loop bookkeeping": max(0.0, t.turns - moto_calls - t.process),
        "idle": max(0.0, live.loop_s - t.turns),
    }


def name_the_limit(live: Live) -> str:
    """Which part held the sustained rate down (see the module docstring)."""
    shares = loop_shares(live)
    if live.sustained_per_s < 0.9 * live.produced_per_s:
        # The loop fell behind the stream: the part that took most of its time is the limit.
        busiest = max((k for k in shares if k != "idle"), key=lambda k: shares[k])
        owner = "the emulator" if busiest.startswith("moto") else "us"
        limit = f"{owner}: {busiest} ({shares[busiest] / live.loop_s:.0%} of the loop's time)"
        if live.produced_per_s < 0.9 * live.offered:
            limit += f"; moto PutRecords held the producer to {live.produced_per_s:,.0f}/s"
        return limit
    if live.produced_per_s < 0.9 * live.offered:
        return "the emulator: moto PutRecords (the producer could not write at the offered rate)"
    return f"none reached (loop busy {live.busy:.0%})"


def describe(live: Live, alone: Alone | None) -> dict[str, Any]:
    """Everything measured, for extra_info and the printout."""
    t = live.times
    arrival, receipt = live.latencies()
    info: dict[str, Any] = {
        "records": live.records,
        "offered_per_s": live.offered,
        "produced_per_s": round(live.produced_per_s),
        "sustained_per_s": round(live.sustained_per_s),
        "span_s": round(live.span_s, 2),
        "drain_and_final_checkpoint_s": round(live.drain_s, 3),
        "latency_from": "ApproximateArrivalTimestamp (moto, ms) to the sink flush that acked it",
        "deliveries": len(arrival),
        "arrival_to_ack_ms_p50_p99_max": [round(percentile(arrival, q)) for q in (50, 99, 100)],
        "receipt_to_ack_ms_p50_p99_max": [round(percentile(receipt, q)) for q in (50, 99, 100)],
        "arrival_to_receipt_ms_p50_p99": [
            round(percentile([a - r for a, r in zip(arrival, receipt, strict=True)], q))
            for q in (50, 99)
        ],
        "per_sink_arrival_to_ack_ms_p50_p99": {
            name: [round(percentile(live.latencies(name)[0], q)) for q in (50, 99)]
            for name in t.latencies
        },
        # moto's cost per call grows with what a destination already holds: first vs last calls
        "per_sink_calls_ms_per_call_all_first10_last10": {
            name: [
                len(calls),
                *(round(ms_per_call(c), 1) for c in (calls, calls[:10], calls[-10:])),
            ]
            for name, calls in t.sink_calls.items()
        },
        "unmatched_acks": t.unmatched,
        "loop_s": round(live.loop_s, 2),
        "loop_share": {k: round(v / live.loop_s, 3) for k, v in loop_shares(live).items()},
        "reads_with_data_empty": [t.reads_with_data, t.reads_empty],
        "checkpoints": t.checkpoints,
        "cpu_s_loop_producer_process": [
            round(s, 2) for s in (live.loop_cpu_s, live.producer_cpu_s, live.process_cpu_s)
        ],
        "rule_matches": live.totals.rule_matches,
        "sink_outcomes": live.totals.sink_outcomes,
        "limit": name_the_limit(live),
    }
    if alone is not None:
        info["alone_per_s"] = {
            "moto PutRecords": round(alone.put_per_s),
            "moto GetRecords": round(alone.get_per_s),
            "our processing": round(alone.processing_per_s),
        }
        info["alone_sink_ms_per_call"] = {k: round(v, 1) for k, v in alone.sink_ms_per_call.items()}
    return info


def measure(
    benchmark: Any,
    config: Config,
    resources: LocalResources,
    keyed: Sequence[tuple[bytes, str]],
    rate: int,
) -> Live:
    """One live run, timed by pytest-benchmark (one round: the stream is consumed once)."""
    runs: list[Live] = []
    benchmark.pedantic(
        lambda: runs.append(live_run(config, resources, keyed, rate)), rounds=1, iterations=1
    )
    assert runs[0].latencies()[0], "no alert was acknowledged: nothing to measure latency on"
    return runs[0]


def publish(benchmark: Any, name: str, live: Live, info: dict[str, Any], note: str) -> None:
    report(benchmark, name, live.records, seconds=live.span_s, note=note, compare=False)
    benchmark.extra_info.update(info)
    print(f"\n{name}: {note}")
    for key, value in info.items():
        print(f"  {key}: {value}")


# ------------------------------------------------------------------ the benchmarks


def test_end_to_end_saturated(
    benchmark: Any, moto: MotoServer, keyed_lines: list[tuple[bytes, str]], tmp_path: Path
) -> None:
    """Throughput: the design target's 10,000/s offered; what the pipeline sustains, and why."""
    config, resources = local_env(moto.endpoint_url, tmp_path)
    alone = Alone()
    kinesis_alone(moto.endpoint_url, keyed_lines, alone)
    alerts = processing_alone(config, keyed_lines, alone)
    sinks_alone(moto.endpoint_url, tmp_path, alerts, alone)
    rate = _env_int("STREAMPROC_BENCH_E2E_RATE", 10_000)
    live = measure(benchmark, config, resources, keyed_lines, rate)
    info = describe(live, alone)
    arrival, _ = live.latencies()
    note = (
        f"offered {rate:,}/s, produced {live.produced_per_s:,.0f}/s, sustained "
        f"{live.sustained_per_s:,.0f}/s; p50 {percentile(arrival, 50):,.0f} ms, p99 "
        f"{percentile(arrival, 99):,.0f} ms arrival→ack; limit: {info['limit']}"
    )
    publish(benchmark, "end to end, moto, saturated", live, info, note)


def test_end_to_end_latency(
    benchmark: Any, moto: MotoServer, keyed_lines: list[tuple[bytes, str]], tmp_path: Path
) -> None:
    """Latency at a rate the pipeline sustains here (default 250/s, for 15 s)."""
    rate = _env_int("STREAMPROC_BENCH_E2E_LATENCY_RATE", 250)
    keyed = keyed_lines[: rate * LATENCY_RUN_S]
    config, resources = local_env(moto.endpoint_url, tmp_path)
    live = measure(benchmark, config, resources, keyed, rate)
    info = describe(live, None)
    arrival, receipt = live.latencies()
    note = (
        f"offered {rate:,}/s, sustained {live.sustained_per_s:,.0f}/s; arrival→ack p50 "
        f"{percentile(arrival, 50):,.0f} ms, p99 {percentile(arrival, 99):,.0f} ms (receipt→ack "
        f"p50 {percentile(receipt, 50):,.0f}, p99 {percentile(receipt, 99):,.0f}); loop busy "
        f"{live.busy:.0%}, moto calls {info['loop_share']['moto sink calls']:.0%} sink + "
        f"{info['loop_share']['moto GetRecords']:.0%} GetRecords"
    )
    publish(benchmark, "end to end, moto, latency", live, info, note)
