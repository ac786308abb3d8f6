"""DynamoDB sink: one item per alert, written idempotently.

The table's partition (hash) key must be ``alert_id`` (String). Each alert is a conditional
PutItem with ``attribute_not_exists(alert_id)``: the first write wins and a re-sent alert (after
a crash, a retry, or a lease move) fails the condition, which is reported as outcome
``duplicate`` - as good as sent. BatchWriteItem cannot carry conditions, so a "batch" here is up
to 25 individual PutItem calls, overlapped on a small thread pool the sink owns; ``flush`` still
waits for every call of the batch and returns only decided outcomes.

Item: ``alert_id`` (S), ``rule`` (S), ``rule_version`` (N), ``severity`` (S), ``key`` (S, when
set), ``event_time`` (S, when set), ``shard_id`` (S), ``sequence_number`` (S), ``payload`` (S, the
alert JSON). Its size is counted like DynamoDB does (UTF-8 bytes of every attribute name and
value; numbers counted by their digits, an over-estimate); an item above 400 KB is parked.

Retry table (per PutItem error code):

============================================  =========================================
duplicate (not an error)                      ConditionalCheckFailedException
retryable                                     ProvisionedThroughputExceededException,
                                              ThrottlingException, RequestLimitExceeded,
                                              InternalServerError, TransactionConflictException,
                                              + the common table in ``connectors.batching``,
                                              + 429/5xx, timeouts and connection errors
permanent (parked at once with the code)      everything else, e.g. ValidationException,
                                              ResourceNotFoundException, AccessDeniedException
============================================  =========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Unpack

from botocore.exceptions import ClientError

from connectors.batching import (
    COMMON_RETRYABLE_CODES,
    BatchingSink,
    EntryResult,
    SinkOptions,
    classify_call_error,
)
from streamproc.interfaces import DeadLetterDestination
from streamproc.records import Alert

RETRYABLE_CODES: frozenset[str] = COMMON_RETRYABLE_CODES | {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "TransactionConflictException",
}
DUPLICATE_CODE = "ConditionalCheckFailedException"
MAX_ENTRIES = 25
MAX_ITEM_BYTES = 400 * 1024
CONDITION = "attribute_not_exists(alert_id)"


class DynamoDbAlertSink(BatchingSink):
    """Writes each alert as one item with a conditional PutItem (see the module docstring).

    Contract: the ``Sink`` protocol. ``add`` buffers; ``flush`` issues the PutItem calls of each
    due batch of up to 25 concurrently (``max_workers`` threads) and blocks until they all
    answered; failures are retried per the retry table with backoff and parked in
    ``dead_letter`` when permanent or after ``max_attempts``. ``close`` stops the thread pool.
    """

    service = "DynamoDB"
    retryable_codes = RETRYABLE_CODES

    def __init__(
        self,
        client: Any,
        *,
        name: str = "dynamodb",
        table: str,
        dead_letter: DeadLetterDestination,
        max_workers: int = 8,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(
            name=name,
            dead_letter=dead_letter,
            max_batch_entries=MAX_ENTRIES,
            max_batch_bytes=MAX_ENTRIES * MAX_ITEM_BYTES,  # no request-level limit on PutItem
            max_entry_bytes=MAX_ITEM_BYTES,
            **options,
        )
        self._client = client
        self._table = table
        # Threads start lazily on the first batch; boto3 clients are safe to share across them
        # (its default connection pool of 10 covers 8 workers).
        self._pool = (
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"sink-{name}")
            if max_workers > 1
            else None
        )

    def _encode(self, alert: Alert) -> tuple[dict[str, Any], int]:
        item: dict[str, dict[str, str]] = {
            "alert_id": {"S": alert.alert_id},
            "rule": {"S": alert.rule},
            "rule_version": {"N": str(alert.rule_version)},
            "severity": {"S": alert.severity},
            "shard_id": {"S": alert.shard_id},
            "sequence_number": {"S": alert.sequence_number},
            "payload": {"S": alert.to_json().decode()},
        }
        if alert.key is not None:
            item["key"] = {"S": alert.key}
        if alert.event_time is not None:
            item["event_time"] = {"S": alert.event_time}
        size = sum(
            len(name.encode()) + len(value.encode())
            for name, typed in item.items()
            for value in typed.values()
        )
        return item, size

    def _send(self, entries: Sequence[dict[str, Any]]) -> list[EntryResult]:
        if self._pool is None or len(entries) == 1:
            return [self._put(item) for item in entries]
        return list(self._pool.map(self._put, entries))

    def _put(self, item: dict[str, Any]) -> EntryResult:
        try:
            self._client.put_item(TableName=self._table, Item=item, ConditionExpression=CONDITION)
        except Exception as exc:  # classified per item: one bad item never fails its batch
            if isinstance(exc, ClientError) and exc.response["Error"].get("Code") == DUPLICATE_CODE:
                return "duplicate"
            return classify_call_error(exc, RETRYABLE_CODES)
        return "sent"

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
