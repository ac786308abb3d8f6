"""EventBridge sink: alerts become events on a bus through PutEvents.

Each alert is one event: ``Source`` = the configured source, ``DetailType`` = the configured
detail type (a string, or a function of the alert), ``Detail`` = the alert payload JSON (which
carries ``alert_id``, so rule targets can deduplicate). EventBridge has no deduplication of its
own: a retried entry can be delivered twice, which the alert id makes harmless downstream.

Limits: at most 10 entries and 256 KiB per PutEvents call. The size of an entry is computed the
way AWS documents it ("Calculating PutEvents event entry size"): UTF-8 bytes of Source,
DetailType, Detail and every Resources entry, plus 14 bytes for Time. We never send Time (the
service stamps it) but count it anyway, so our figure is never below AWS's. An entry above
256 KiB on its own is parked as too large.

Retry table (per-entry ``ErrorCode`` and whole-call error codes):

============================================  =========================================
retryable                                     ThrottlingException, InternalFailure,
                                              InternalException, ServiceUnavailable(Exception)
                                              + the common table in ``connectors.batching``
                                              + any whole call answered 429/5xx
permanent (parked at once with the code)      everything else, e.g. MalformedDetail,
                                              InvalidArgument, AccessDeniedException,
                                              NotAuthorizedForSourceException,
                                              NotAuthorizedForDetailTypeException,
                                              ResourceNotFoundException (no such bus)
============================================  =========================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    "ThrottlingException",
    "InternalFailure",
    "InternalException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
}
MAX_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
TIME_FIELD_BYTES = 14  # AWS counts 14 bytes for Time whether or not it is sent


class EventBridgeSink(BatchingSink):
    """Sends alerts to an EventBridge bus with PutEvents (see the module docstring).

    Contract: the ``Sink`` protocol. ``add`` buffers; ``flush`` makes at most one PutEvents call
    per 10 due entries and stops early after a batch fails entirely; failed entries are retried
    per the retry table with backoff and parked in ``dead_letter`` when permanent or after
    ``max_attempts``. Response entries are positional: entry *i* answers request entry *i*.
    """

    service = "EventBridge"
    retryable_codes = RETRYABLE_CODES

    def __init__(
        self,
        client: Any,
        *,
        name: str = "eventbridge",
        bus_name: str,
        dead_letter: DeadLetterDestination,
        source: str = "streamproc",
        detail_type: str | Callable[[Alert], str] = "Fraud Alert",
        resources: Sequence[str] = (),
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
        self._bus_name = bus_name
        self._source = source
        self._detail_type = detail_type
        self._resources = list(resources)

    def _encode(self, alert: Alert) -> tuple[dict[str, Any], int]:
        detail = alert.to_json().decode()
        # A rule kind may name its own event (inventory: "inventory.system", "Low Inventory
        # Alert"); otherwise the configured ones.
        source = alert.event_source or self._source
        if alert.detail_type is not None:
            detail_type = alert.detail_type
        elif callable(self._detail_type):
            detail_type = self._detail_type(alert)
        else:
            detail_type = self._detail_type
        entry: dict[str, Any] = {
            "EventBusName": self._bus_name,
            "Source": source,
            "DetailType": detail_type,
            "Detail": detail,
        }
        if self._resources:
            entry["Resources"] = self._resources
        size = (
            TIME_FIELD_BYTES
            + len(source.encode())
            + len(detail_type.encode())
            + len(detail.encode())
            + sum(len(resource.encode()) for resource in self._resources)
        )
        return entry, size

    def _send(self, entries: Sequence[dict[str, Any]]) -> list[EntryResult]:
        response = self._client.put_events(Entries=list(entries))
        results: list[EntryResult] = []
        for answer in response.get("Entries", []):
            code = answer.get("ErrorCode")
            if code:
                message = str(answer.get("ErrorMessage") or "")
                results.append(EntryFailure(code, message, retryable=code in RETRYABLE_CODES))
            else:
                results.append("sent")
        return results  # a length mismatch is treated as a retryable failure by the base
