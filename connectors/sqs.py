"""SQS sink: alerts are sent to a queue with SendMessageBatch.

``MessageBody`` is the alert payload JSON (with ``alert_id``); message attributes ``severity``
and ``rule`` (String). On a FIFO queue (URL ends in ``.fifo``) ``MessageGroupId`` is the alert
key (else its rule; sanitized to SQS's 128-character alphabet) and ``MessageDeduplicationId``
is the alert id, so SQS drops a re-sent alert within its 5-minute deduplication window.
A standard queue delivers at least once; consumers deduplicate by alert id.

Limits: at most 10 entries per call and ``max_batch_bytes`` in total (1 MiB, the service limit
since 2025); one message (body + attribute names, types and values) at most
``max_message_bytes``, 256 KiB by default because queues created before the limit was raised,
or configured with a lower ``MaximumMessageSize``, still refuse more. A larger alert is parked.

Retry table (``Failed`` entries and whole-call errors):

============================================  =========================================
retryable                                     ``SenderFault`` false (a server-side failure),
                                              or code RequestThrottled, KmsThrottled,
                                              InternalError, ServiceUnavailable,
                                              + the common table in ``connectors.batching``
                                              + any whole call answered 429/5xx
permanent (parked at once with the code)      ``SenderFault`` true with any other code, e.g.
                                              InvalidMessageContents, KmsDisabled,
                                              KmsAccessDenied, AccessDenied,
                                              QueueDoesNotExist (whole call)
============================================  =========================================
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Unpack

from connectors.batching import (
    COMMON_RETRYABLE_CODES,
    BatchingSink,
    EntryFailure,
    EntryResult,
    SinkOptions,
)
from streamproc.interfaces import DeadLetterDestination
from streamproc.records import Alert

RETRYABLE_CODES: frozenset[str] = COMMON_RETRYABLE_CODES | {
    "RequestThrottled",
    "KmsThrottled",
    "KMS.ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
}
MAX_ENTRIES = 10
MAX_BATCH_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024


class SqsSink(BatchingSink):
    """Sends alerts to an SQS queue with SendMessageBatch (see the module docstring).

    Contract: the ``Sink`` protocol. ``add`` buffers; ``flush`` makes one SendMessageBatch call
    per 10 due entries (fewer if ``max_batch_bytes`` is reached) and stops early after a batch
    fails entirely; failures are retried per the retry table with backoff and parked in
    ``dead_letter`` when permanent or after ``max_attempts``.
    """

    service = "SQS"
    retryable_codes = RETRYABLE_CODES

    def __init__(
        self,
        client: Any,
        *,
        name: str = "sqs",
        queue_url: str,
        dead_letter: DeadLetterDestination,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(
            name=name,
            dead_letter=dead_letter,
            max_batch_entries=MAX_ENTRIES,
            max_batch_bytes=max_batch_bytes,
            max_entry_bytes=min(max_message_bytes, max_batch_bytes),
            **options,
        )
        self._client = client
        self._queue_url = queue_url
        self._fifo = queue_url.endswith(".fifo")

    def _encode(self, alert: Alert) -> tuple[dict[str, Any], int]:
        body = alert.to_json().decode()
        attributes = message_attributes(alert)
        entry: dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
        if self._fifo:
            entry["MessageGroupId"] = fifo_group_id(alert)
            entry["MessageDeduplicationId"] = alert.alert_id
        return entry, len(body.encode()) + attributes_size(attributes)

    def _send(self, entries: Sequence[dict[str, Any]]) -> list[EntryResult]:
        request = [{"Id": str(index), **entry} for index, entry in enumerate(entries)]
        response = self._client.send_message_batch(QueueUrl=self._queue_url, Entries=request)
        return batch_results(len(entries), response, RETRYABLE_CODES)


# -- shared with the SNS sink and the SQS dead-letter queue: same attribute and id rules --


def batch_results(
    count: int, response: dict[str, Any], retryable_codes: frozenset[str]
) -> list[EntryResult]:
    """Map an SNS/SQS ``Successful``/``Failed`` response (Ids = batch indexes) to results.

    An entry named in neither list is treated as a retryable failure (it may have been
    delivered; a repeat is harmless because the alert id travels with it).
    """
    results: list[EntryResult] = [
        EntryFailure("NoResult", "entry missing from the response", retryable=True)
    ] * count
    for success in response.get("Successful", []):
        results[int(success["Id"])] = "sent"
    for failed in response.get("Failed", []):
        code = str(failed.get("Code") or "Unknown")
        retryable = code in retryable_codes or not failed.get("SenderFault", False)
        results[int(failed["Id"])] = EntryFailure(code, str(failed.get("Message") or ""), retryable)
    return results


def message_attributes(alert: Alert) -> dict[str, dict[str, str]]:
    """SNS/SQS message attributes ``severity`` and ``rule`` (String), for subscription filters."""
    values = {"severity": alert.severity, "rule": alert.rule}
    return {
        name: {"DataType": "String", "StringValue": value}
        for name, value in values.items()
        if value
    }


def attributes_size(attributes: dict[str, dict[str, str]]) -> int:
    """Bytes SNS/SQS count for message attributes: name + data type + value, UTF-8."""
    return sum(
        len(name.encode()) + len(attr["DataType"].encode()) + len(attr["StringValue"].encode())
        for name, attr in attributes.items()
    )


_FIFO_ID_REJECTS = re.compile(r"[^A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]")


def fifo_group_id(alert: Alert) -> str:
    """A FIFO MessageGroupId for the alert: its key, else its rule (see :func:`fifo_id`)."""
    return fifo_id(alert.key or alert.rule)


def fifo_id(raw: str) -> str:
    """``raw`` as an SNS/SQS FIFO group/deduplication id: 1-128 alphanumerics or punctuation.

    A value that does not fit is sanitized and suffixed with a hash of the original, so
    distinct values stay distinct.
    """
    clean = _FIFO_ID_REJECTS.sub("_", raw)
    if clean == raw and 0 < len(raw) <= 128:
        return raw
    digest = hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()
    return f"{clean[:111]}-{digest}"
