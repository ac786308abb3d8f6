"""SNS sink: alerts are published to a topic with PublishBatch.

``Message`` is the alert payload JSON (with ``alert_id``). Message attributes ``severity`` and
``rule`` (String) let subscriptions filter, e.g. ``FilterPolicy {"severity": ["HIGH"]}``.
On a FIFO topic (ARN ends in ``.fifo``) ``MessageGroupId`` is the alert key (else its rule) and
``MessageDeduplicationId`` is the alert id, so SNS drops a re-sent alert within its 5-minute
deduplication window. A standard topic delivers at least once; the alert id is in the payload.

Limits: at most 10 entries and 256 KiB (262,144 bytes) per call, message body plus attributes
(name, type and value bytes). A single message above 256 KiB is parked as too large.
Entry ``Id`` is the index in the batch (unique, matches ``[A-Za-z0-9_-]{1,80}``).

Retry table (``Failed`` entries and whole-call errors):

============================================  =========================================
retryable                                     ``SenderFault`` false (a server-side failure),
                                              or code Throttled, KMSThrottling, InternalError,
                                              + the common table in ``connectors.batching``
                                              + any whole call answered 429/5xx
permanent (parked at once with the code)      ``SenderFault`` true with any other code, e.g.
                                              InvalidParameter, AuthorizationError, NotFound,
                                              KMSDisabled, KMSAccessDenied, InvalidSecurity
============================================  =========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

from connectors.batching import (
    COMMON_RETRYABLE_CODES,
    BatchingSink,
    EntryResult,
    SinkOptions,
)
from connectors.sqs import attributes_size, batch_results, fifo_group_id, message_attributes
from streamproc.interfaces import DeadLetterDestination
from streamproc.records import Alert

RETRYABLE_CODES: frozenset[str] = COMMON_RETRYABLE_CODES | {
    "Throttled",
    "KMSThrottling",
    "InternalError",
}
MAX_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024


class SnsSink(BatchingSink):
    """Publishes alerts to an SNS topic with PublishBatch (see the module docstring).

    Contract: the ``Sink`` protocol. ``add`` buffers; ``flush`` makes one PublishBatch call per
    10 due entries (fewer if the 256 KiB total is reached) and stops early after a batch fails
    entirely; failures are retried per the retry table with backoff and parked in
    ``dead_letter`` when permanent or after ``max_attempts``.
    """

    service = "SNS"
    retryable_codes = RETRYABLE_CODES

    def __init__(
        self,
        client: Any,
        *,
        name: str = "sns",
        topic_arn: str,
        dead_letter: DeadLetterDestination,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(
            name=name,
            dead_letter=dead_letter,
            max_batch_entries=MAX_ENTRIES,
            max_batch_bytes=MAX_BATCH_BYTES,
            max_entry_bytes=MAX_BATCH_BYTES,
            **options,
        )
        self._client = client
        self._topic_arn = topic_arn
        self._fifo = topic_arn.endswith(".fifo")

    def _encode(self, alert: Alert) -> tuple[dict[str, Any], int]:
        message = alert.to_json().decode()
        attributes = message_attributes(alert)
        entry: dict[str, Any] = {"Message": message, "MessageAttributes": attributes}
        if self._fifo:
            entry["MessageGroupId"] = fifo_group_id(alert)
            entry["MessageDeduplicationId"] = alert.alert_id
        return entry, len(message.encode()) + attributes_size(attributes)

    def _send(self, entries: Sequence[dict[str, Any]]) -> list[EntryResult]:
        request = [{"Id": str(index), **entry} for index, entry in enumerate(entries)]
        response = self._client.publish_batch(
            TopicArn=self._topic_arn, PublishBatchRequestEntries=request
        )
        return batch_results(len(entries), response, RETRYABLE_CODES)
