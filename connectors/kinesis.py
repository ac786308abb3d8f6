"""The boto3 poller: one process reads every shard of a Kinesis stream with GetRecords.

``KinesisPollerSource`` lists the shards, hands out one ``KinesisShardReader`` per readable shard
and stores checkpoints through a :class:`~streamproc.interfaces.CheckpointStore`. It serves the
embedded local mode and small deployments; large ones use the KCL daemon.

Ordering across resharding: a child shard is handed out only after each of its parents is
checkpointed as ended (or has been trimmed away), so the records of one partition key are never
processed out of order, even though the parent and the children overlap in time.

Give it a client with botocore's retries off (``make_client("kinesis", ..., config=Config(
retries={"total_max_attempts": 1}))``): they sleep inside the call, while the reader never
blocks the loop and backs off by itself.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from connectors.kpl import deaggregate, has_kpl_header
from streamproc.errors import ConfigError, TransportError
from streamproc.interfaces import CheckpointStore, RestorePoint, ShardReader
from streamproc.records import Position, Record, RecordBatch

logger = logging.getLogger(__name__)

StartPosition = Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]

# Errors that pass by themselves. ResourceInUse: the stream is being created or resharded.
_RETRYABLE_CODES = frozenset(
    [
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "KMSThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ResourceInUseException",
    ]
)
_BACKOFF_BASE = 0.2  # seconds; doubles per consecutive failure up to max_backoff
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PollSettings:
    """How hard a reader polls its shard. AWS allows 5 GetRecords calls/s/shard, 10,000 records
    per call; reads faster than that are throttled (and then backed off)."""

    max_records_per_call: int = 1000
    min_call_interval: float = 0.2  # seconds between GetRecords calls
    idle_call_interval: float = 1.0  # after a call that found nothing new
    max_backoff: float = 5.0  # cap of the exponential backoff after errors

    def __post_init__(self) -> None:
        if not 1 <= self.max_records_per_call <= 10000:
            raise ConfigError("max_records_per_call", "must be between 1 and 10000 (AWS limit)")
        if min(self.min_call_interval, self.idle_call_interval) < 0 or self.max_backoff <= 0:
            raise ConfigError("min_call_interval", "intervals must be >= 0, max_backoff > 0")


class KinesisShardReader:
    """Reads one shard with GetRecords; implements :class:`~streamproc.interfaces.ShardReader`.

    - ``next_batch`` never sleeps and makes at most one call: when the reader has no iterator
      (first call, after expiry) that call is GetShardIterator and the result is ``None``.
    - ``None`` also means "not due": at most one GetRecords per ``min_call_interval``,
      ``idle_call_interval`` after a read that found nothing, exponential backoff with jitter
      (capped at ``max_backoff``) after throttling, server or connection errors.
    - An expired iterator is replaced from just after the last record returned, so nothing is
      replayed or skipped. Other errors raise ``TransportError(retryable=False)``.
    - ``finished`` is true once a closed shard is read to its end (no next iterator).
    - ``resume_after`` (a checkpoint) wins over ``start``; records at or before it are skipped.
    """

    def __init__(
        self,
        client: Any,
        *,
        stream: str,
        shard_id: str,
        start: StartPosition = "TRIM_HORIZON",
        start_timestamp: datetime | None = None,
        resume_after: Position | None = None,
        settings: PollSettings = PollSettings(),
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        _check_start(start, start_timestamp)
        self.shard_id = shard_id
        self.start = start
        self.restore_until: Position | None = None
        self.restore_closed_through: Mapping[str, int] = {}
        self.parents: tuple[str, ...] = ()
        self._where = f"stream {stream!r} shard {shard_id}"
        self._client = client
        self._stream = stream
        self._start_timestamp = start_timestamp
        self._settings = settings
        self._clock = clock
        self._jitter = jitter
        self._iterator: str | None = None
        # Everything at or before ``_done_through`` was returned (or checkpointed before we
        # started). ``_whole`` says whether every sub-record of that sequence number is done.
        self._done_through = resume_after
        self._whole = False
        self._skip_through = resume_after  # filter for the first records of a new iterator
        self._latest_opened_at: datetime | None = None
        self._next_call_at = clock()
        self._failures = 0
        self._finished = False
        self._closed = False
        self.calls = 0
        self.throttled_calls = 0
        self.connection_errors = 0
        self.expired_iterators = 0
        self.malformed_aggregates = 0

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        self._closed = True
        self._iterator = None

    def next_batch(self) -> RecordBatch | None:
        if self._finished or self._closed:
            return None
        now = self._clock()
        if now < self._next_call_at:
            return None
        if self._iterator is None:
            self._open_iterator(now)
            return None
        return self._read(now)

    def _iterator_args(self) -> dict[str, Any]:
        if self._done_through is not None:
            # A checkpoint may sit inside a KPL aggregate: all its sub-records share one
            # sequence number, and sub-records 0..n may be done while n+1.. are not. Then start
            # AT the sequence number and drop sub-records <= the checkpoint's sub-sequence;
            # AFTER_SEQUENCE_NUMBER would lose the rest of the aggregate. After a record this
            # reader returned (always whole), AFTER is exact and reads nothing twice.
            kind = "AFTER_SEQUENCE_NUMBER" if self._whole else "AT_SEQUENCE_NUMBER"
            self._skip_through = None if self._whole else self._done_through
            return {
                "ShardIteratorType": kind,
                "StartingSequenceNumber": self._done_through.sequence,
            }
        if self.start == "LATEST" and self._latest_opened_at is not None:
            # The LATEST iterator expired before any record came: "latest" was when we opened it.
            return {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": self._latest_opened_at}
        if self.start == "AT_TIMESTAMP":
            return {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": self._start_timestamp}
        return {"ShardIteratorType": self.start}

    def _open_iterator(self, now: float) -> None:
        args = self._iterator_args()
        opened_at = datetime.now(UTC)
        try:
            self.calls += 1
            response = self._client.get_shard_iterator(
                StreamName=self._stream, ShardId=self.shard_id, **args
            )
        except (ClientError, BotoCoreError) as exc:
            self._on_error(exc, "GetShardIterator", now)
            return
        if args["ShardIteratorType"] == "LATEST":
            self._latest_opened_at = opened_at
        self._iterator = response.get("ShardIterator")
        if self._iterator is None:
            self._finished = True
        logger.debug("%s: iterator %s", self._where, args)

    def _read(self, now: float) -> RecordBatch | None:
        try:
            self.calls += 1
            response = self._client.get_records(
                ShardIterator=self._iterator, Limit=self._settings.max_records_per_call
            )
        except (ClientError, BotoCoreError) as exc:
            self._on_error(exc, "GetRecords", now)
            return None
        self._failures = 0
        raw: list[dict[str, Any]] = response.get("Records", [])
        records = self._user_records(raw) if raw else []
        behind: int | None = response.get("MillisBehindLatest")
        self._iterator = response.get("NextShardIterator")
        if self._iterator is None:
            self._finished = True
            logger.info("%s: read to its end", self._where)
        # Empty but behind happens (gaps in a shard): keep reading at full speed then.
        idle = not raw and not behind
        interval = self._settings.idle_call_interval if idle else self._settings.min_call_interval
        self._next_call_at = now + interval
        return RecordBatch(self.shard_id, records, behind)

    def _user_records(self, raw: list[dict[str, Any]]) -> list[Record]:
        out: list[Record] = []
        skip = self._skip_through
        shard_id = self.shard_id
        first_malformed: str | None = None
        last_seq = 0
        last_sub = 0
        for kinesis_record in raw:
            seq: str = kinesis_record["SequenceNumber"]
            data: bytes = kinesis_record["Data"]
            arrival = _epoch_ms(kinesis_record["ApproximateArrivalTimestamp"])
            aggregated = has_kpl_header(data)
            parts = deaggregate(kinesis_record) if aggregated else None
            if parts is None:
                parts = [(kinesis_record["PartitionKey"], data)]
                if aggregated:
                    self.malformed_aggregates += 1
                    first_malformed = first_malformed or seq
            last_seq, last_sub = int(seq), len(parts) - 1
            for sub, (partition_key, payload) in enumerate(parts):
                if skip is not None and Position(last_seq, sub) <= skip:
                    continue
                out.append(Record(payload, partition_key, seq, sub, arrival, shard_id))
        # Records come whole from GetRecords: every sub-record of the last one is now done.
        self._done_through = Position(last_seq, last_sub)
        self._whole = True
        self._skip_through = None
        if first_malformed is not None:
            logger.warning(
                "%s: record(s) with the KPL header could not be de-aggregated (first at %s);"
                " passed through whole, to be dead-lettered downstream",
                self._where,
                first_malformed,
            )
        return out

    def _on_error(self, exc: Exception, operation: str, now: float) -> None:
        if _error_code(exc) == "ExpiredIteratorException":
            self.expired_iterators += 1
            self._iterator = None
            self._next_call_at = now
            logger.info("%s: iterator expired; reopening it after the last record", self._where)
            return
        if _is_connection_error(exc):
            self.connection_errors += 1
        elif _is_retryable(exc):
            self.throttled_calls += 1
        else:
            raise TransportError(
                f"Kinesis {operation} failed for {self._where}: {_describe(exc)}", retryable=False
            ) from exc
        self._failures += 1
        ceiling = min(self._settings.max_backoff, _BACKOFF_BASE * 2 ** (self._failures - 1))
        delay = max(ceiling * (0.5 + 0.5 * self._jitter()), self._settings.min_call_interval)
        self._next_call_at = now + delay
        log = logger.warning if self._failures in (1, 10) else logger.debug
        log("%s: %s %s; retry in %.2fs", self._where, operation, _describe(exc), delay)


class KinesisPollerSource:
    """All shards of one stream, read in one process; implements ``Source``.

    ``poll_assignments`` calls ListShards and returns a reader for each shard that became
    readable: not ended in the checkpoint store, and every parent ended there (or trimmed away).
    Each shard is handed out at most once per source. Where a reader starts:

    1. a checkpoint exists → right after it (exact, even inside a KPL aggregate);
    2. a parent was read by this application (it has a checkpoint) → TRIM_HORIZON (the child's
       first record was written right after the parent closed; LATEST would skip records written
       between the split and our first read), or AT_TIMESTAMP when that is configured;
    3. otherwise the configured ``start_position``. With LATEST a shard that is already closed
       and never checkpointed is skipped: all it holds predates "now". Its children are treated
       like shards without parents.

    ``poll_assignments`` returns ``[]`` when ListShards is throttled or unreachable (the runtime
    polls again later) and raises ``TransportError(retryable=False)`` when the stream is gone.
    """

    def __init__(
        self,
        client: Any,
        *,
        stream: str,
        checkpoints: CheckpointStore,
        start_position: StartPosition = "TRIM_HORIZON",
        start_timestamp: datetime | None = None,
        max_records_per_call: int = 1000,
        min_call_interval: float = 0.2,
        idle_call_interval: float = 1.0,
        max_backoff: float = 5.0,
        shards_page_size: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_start(start_position, start_timestamp)
        self._settings = PollSettings(
            max_records_per_call, min_call_interval, idle_call_interval, max_backoff
        )
        self._client = client
        self._stream = stream
        self._checkpoints = checkpoints
        self._start = start_position
        self._start_timestamp = start_timestamp
        self._page_size = shards_page_size
        self._clock = clock
        self._readers: dict[str, KinesisShardReader] = {}
        self._ended: set[str] = set()  # checkpointed as ended: never read again
        self._skipped: set[str] = set()  # closed before a LATEST start: nothing to read

    def poll_assignments(self) -> list[ShardReader]:
        shards = self._list_shards()
        if shards is None:
            return []
        present = {shard["ShardId"] for shard in shards}
        new: list[ShardReader] = []
        # Shard ids grow with creation time, so parents are decided before their children.
        for shard in sorted(shards, key=lambda s: str(s["ShardId"])):
            shard_id: str = shard["ShardId"]
            if shard_id in self._readers or shard_id in self._ended or shard_id in self._skipped:
                continue
            checkpoint = self._checkpoints.load(self._stream, shard_id)
            if checkpoint is not None and checkpoint.shard_ended:
                self._ended.add(shard_id)
                continue
            parents = [
                p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
            ]
            if any(p in present and not self._parent_done(p) for p in parents):
                continue  # a parent still has records to be processed first
            resume_after = checkpoint.position if checkpoint is not None else None
            restore_until = None
            restore = checkpoint.restore if checkpoint is not None else None
            replay_from = restore.replay_from if restore is not None else None
            if resume_after is not None and replay_from is not None and replay_from <= resume_after:
                # Rebuild window state: read again from the oldest record it holds (inclusive:
                # "done through" the position just before it), up to the checkpoint.
                restore_until = resume_after
                resume_after = Position(
                    replay_from.sequence_number, replay_from.sub_sequence_number - 1
                )
            if resume_after is not None:
                start: StartPosition = self._start
            elif any(p in self._ended or self._checkpoints.load(self._stream, p) for p in parents):
                start = "AT_TIMESTAMP" if self._start == "AT_TIMESTAMP" else "TRIM_HORIZON"
            else:
                start = self._start
                closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
                if start == "LATEST" and closed and checkpoint is None:
                    self._skipped.add(shard_id)
                    logger.info(
                        "shard %s/%s closed before a LATEST start: skipped", self._stream, shard_id
                    )
                    continue
            reader = KinesisShardReader(
                self._client,
                stream=self._stream,
                shard_id=shard_id,
                start=start,
                start_timestamp=self._start_timestamp,
                resume_after=resume_after,
                settings=self._settings,
                clock=self._clock,
            )
            reader.restore_until = restore_until
            reader.parents = tuple(parents)
            if restore is not None and restore_until is not None:
                reader.restore_closed_through = dict(restore.closed_through)
            self._readers[shard_id] = reader
            new.append(reader)
            logger.info("shard %s/%s assigned: %s", self._stream, shard_id, resume_after or start)
        return new

    def checkpoint(
        self,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> None:
        self._checkpoints.save(
            self._stream, shard_id, position, shard_ended=shard_ended, restore=restore
        )

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()

    def _parent_done(self, parent: str) -> bool:
        if parent in self._ended or parent in self._skipped:
            return True
        checkpoint = self._checkpoints.load(self._stream, parent)
        if checkpoint is not None and checkpoint.shard_ended:
            self._ended.add(parent)
            return True
        return False

    def _list_shards(self) -> list[dict[str, Any]] | None:
        shards: list[dict[str, Any]] = []
        args: dict[str, Any] = {"StreamName": self._stream, "MaxResults": self._page_size}
        restarted = False
        while True:
            try:
                response = self._client.list_shards(**args)
            except (ClientError, BotoCoreError) as exc:
                if _error_code(exc) == "ExpiredNextTokenException" and not restarted:
                    restarted, shards = True, []
                    args = {"StreamName": self._stream, "MaxResults": self._page_size}
                    continue
                if _is_connection_error(exc) or _is_retryable(exc):
                    logger.warning(
                        "stream %s: ListShards %s; retry later", self._stream, _describe(exc)
                    )
                    return None
                raise TransportError(
                    f"Kinesis ListShards failed for stream {self._stream!r}: {_describe(exc)}",
                    retryable=False,
                ) from exc
            shards.extend(response.get("Shards", []))
            token = response.get("NextToken")
            if not token:
                return shards
            # The token names the stream; AWS refuses StreamName and NextToken together.
            args = {"NextToken": token, "MaxResults": self._page_size}


def _epoch_ms(timestamp: datetime) -> int:
    if timestamp.tzinfo is None:  # botocore returns aware datetimes; be safe anyway
        timestamp = timestamp.replace(tzinfo=UTC)
    return (timestamp - _EPOCH) // timedelta(milliseconds=1)


def _check_start(start: str, timestamp: datetime | None) -> None:
    if start not in get_args(StartPosition):
        raise ConfigError("start_position", f"{start!r} is not one of {get_args(StartPosition)}")
    if start == "AT_TIMESTAMP" and (timestamp is None or timestamp.utcoffset() is None):
        raise ConfigError("start_timestamp", "AT_TIMESTAMP needs a timezone-aware datetime")


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _is_connection_error(exc: Exception) -> bool:
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def _is_retryable(exc: Exception) -> bool:
    """Throttling and server-side (5xx) failures: the same call later can succeed."""
    if not isinstance(exc, ClientError):
        return False
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return _error_code(exc) in _RETRYABLE_CODES or status >= 500


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return f"{_error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}"
    return f"{type(exc).__name__}: {exc}"
