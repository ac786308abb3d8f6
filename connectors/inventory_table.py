"""Inventory table sink: keeps ``current_quantity`` per (store, product) in DynamoDB, counting
each event once however often it is delivered.

An inventory rule with ``stock_sink="inventory_table"`` sends one stock update per event (not
an alert for people: it rides the same delivery path, so it is checkpointed the same way). Each
update is one TransactWriteItems of two actions on the table (hash key ``store_id``, range key
``product_id``, both S):

1. Put a marker item ``store_id = <the store>``, ``product_id = "#applied#<event id>"``
   (markers spread over the stores' partitions; ``expires_at`` epoch seconds for a TTL, by
   default 400 days: longer than the longest Kinesis retention, so a replay never finds its
   marker gone), on condition it does not exist;
2. ``ADD current_quantity :delta`` on the product's item.

A replayed event (after a crash, a restart, a lease move) fails the marker's condition, the
whole transaction is cancelled, and the outcome is ``duplicate``: the quantity never counts an
event twice. The event id depends only on the event (not on the rule's name or version), so
two rules or a new rule version never count an event twice either. A transaction cancelled by
a conflict or throttling is retried; other errors follow the DynamoDB alert sink's table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Unpack

from botocore.exceptions import ClientError

from connectors.batching import (
    BatchingSink,
    EntryFailure,
    EntryResult,
    SinkOptions,
    classify_call_error,
)
from connectors.dynamodb import RETRYABLE_CODES
from streamproc.interfaces import DeadLetterDestination
from streamproc.records import Alert

MARKER_PREFIX = "#applied#"
MARKER_TTL_S = 400 * 86_400
RETRY_REASONS = frozenset(
    {
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    }
)
CONDITION = "attribute_not_exists(product_id)"


class InventoryTableSink(BatchingSink):
    service = "DynamoDB"
    retryable_codes = RETRYABLE_CODES

    def __init__(
        self,
        client: Any,
        *,
        name: str = "inventory_table",
        table: str,
        dead_letter: DeadLetterDestination,
        max_workers: int = 4,
        marker_ttl_s: int = MARKER_TTL_S,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(
            name=name,
            dead_letter=dead_letter,
            max_batch_entries=25,
            max_batch_bytes=25 * 4096,
            max_entry_bytes=4096,
            **options,
        )
        self._client = client
        self._table = table
        self._marker_ttl_s = marker_ttl_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"sink-{name}")

    def _encode(self, alert: Alert) -> tuple[dict[str, Any], int]:
        fields = alert.fields
        entry = {
            "id": alert.alert_id,
            "store_id": str(fields["store_id"]),
            "product_id": str(fields["product_id"]),
            "delta": fields["quantity_delta"],
        }
        return entry, 200 + len(entry["store_id"]) + len(entry["product_id"])

    def _send(self, entries: Sequence[dict[str, Any]]) -> list[EntryResult]:
        # One product's updates one after another, different products in parallel: two
        # transactions on one item at once only conflict (DynamoDB cancels one, to be retried),
        # and an emulator without isolation (moto) can lose one of two concurrent ADDs.
        groups: dict[tuple[str, str], list[int]] = {}
        for index, entry in enumerate(entries):
            groups.setdefault((entry["store_id"], entry["product_id"]), []).append(index)
        results: list[EntryResult] = ["sent"] * len(entries)

        def apply_group(indices: list[int]) -> None:
            for index in indices:
                results[index] = self._apply(entries[index])

        for _ in self._pool.map(apply_group, groups.values()):
            pass
        return results

    def _apply(self, entry: dict[str, Any]) -> EntryResult:
        table = self._table
        expires = str(int(time.time()) + self._marker_ttl_s)
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {
                                "store_id": {"S": entry["store_id"]},
                                "product_id": {"S": MARKER_PREFIX + entry["id"]},
                                "expires_at": {"N": expires},
                            },
                            "ConditionExpression": CONDITION,
                        }
                    },
                    {
                        "Update": {
                            "TableName": table,
                            "Key": {
                                "store_id": {"S": entry["store_id"]},
                                "product_id": {"S": entry["product_id"]},
                            },
                            "UpdateExpression": "ADD current_quantity :delta",
                            "ExpressionAttributeValues": {":delta": {"N": repr(entry["delta"])}},
                        }
                    },
                ]
            )
        except ClientError as exc:
            reasons = exc.response.get("CancellationReasons") or []
            codes = [str(r.get("Code", "")) for r in reasons]
            if codes and codes[0] == "ConditionalCheckFailed":
                return "duplicate"  # this event was counted before
            retry = [code for code in codes if code in RETRY_REASONS]
            if retry:
                return EntryFailure(retry[0], "transaction cancelled", retryable=True)
            return classify_call_error(exc, RETRYABLE_CODES)
        return "sent"

    def close(self) -> None:
        super().close()
        self._pool.shutdown(wait=True)
