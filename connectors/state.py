"""Snapshots of rule state that replay cannot rebuild (inventory stock), in DynamoDB.

One item per (stream, owning shard, rule, key): hash key ``shard`` = ``<stream>/<shard_id>``,
range key ``item`` = ``<rule>/<key>``; attributes ``value`` (the state as JSON), and the
position up to which the value counts every record of that key (the snapshot's):
``as_of_shard`` (the owning shard, or a parent it was inherited from), ``sequence_number``,
``sub_sequence_number`` and ``position_key`` (sortable).
The runtime writes the items that changed, as of a settled position, before it checkpoints
that position. Each write is conditional: it never replaces a value counted to a later record
of the same shard, so a stale writer (a worker that lost its lease but has not noticed yet)
cannot undo a newer snapshot; repeating a write is harmless.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from connectors.checkpoints import _is_retryable, position_key
from streamproc.errors import TransportError
from streamproc.records import Position
from streamproc.stateful import StateItem

log = logging.getLogger(__name__)
# Conditional writes in flight per save; boto3's default pool of 10 connections covers them.
SAVE_THREADS = 8


class DynamoDbStateStore:
    """A :class:`~streamproc.interfaces.StateStore` over one DynamoDB table."""

    def __init__(self, client: Any, table: str, stream: str) -> None:
        self._client = client
        self._table = table
        self._stream = stream

    def load(self, shard_id: str) -> list[StateItem]:
        items: list[StateItem] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "shard"},
            "ExpressionAttributeValues": {":s": {"S": f"{self._stream}/{shard_id}"}},
            "ConsistentRead": True,
        }
        try:
            while True:
                page = self._client.query(**kwargs)
                for raw in page.get("Items", []):
                    rule, _, key = raw["item"]["S"].partition("/")
                    items.append(
                        StateItem(
                            rule=rule,
                            key=key,
                            value=orjson.loads(raw["value"]["S"]),
                            shard_id=raw.get("as_of_shard", {"S": shard_id})["S"],
                            position=Position.of(
                                raw["sequence_number"]["S"],
                                int(raw["sub_sequence_number"]["N"]),
                            ),
                        )
                    )
                if "LastEvaluatedKey" not in page:
                    return items
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(
                f"cannot load rule state of {shard_id} from table {self._table!r}: {exc}",
                retryable=_is_retryable(exc),
            ) from exc

    def save(self, shard_id: str, items: list[StateItem]) -> None:
        """Write ``items``, each on the condition above. A batch write takes no condition, so
        each item is a request of its own; at full speed a checkpoint changes thousands of
        products, so up to ``SAVE_THREADS`` requests are in flight at once (one after another,
        2,000 items at a 5 ms round trip would hold the shard's loop for 10 s). The first
        failure stops the rest and is raised (TransportError); the runtime then retries the
        whole save later, which is harmless."""
        threads = min(SAVE_THREADS, len(items))
        if threads <= 1:
            for item in items:
                self._put(shard_id, item)
            return
        failures: list[TransportError] = []
        stop = threading.Event()

        def write(part: list[StateItem]) -> None:
            for item in part:
                if stop.is_set():
                    return
                try:
                    self._put(shard_id, item)
                except TransportError as exc:
                    failures.append(exc)
                    stop.set()
                    return

        with ThreadPoolExecutor(threads, thread_name_prefix="state-save") as pool:
            list(pool.map(write, [items[first::threads] for first in range(threads)]))
        if failures:
            raise failures[0]

    def _put(self, shard_id: str, item: StateItem) -> None:
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "shard": {"S": f"{self._stream}/{shard_id}"},
                    "item": {"S": f"{item.rule}/{item.key}"},
                    "value": {"S": orjson.dumps(dict(item.value)).decode()},
                    "as_of_shard": {"S": item.shard_id},
                    "sequence_number": {"S": item.position.sequence},
                    "sub_sequence_number": {"N": str(item.position.sub_sequence_number)},
                    "position_key": {"S": position_key(item.position)},
                },
                ConditionExpression=(
                    "attribute_not_exists(#i) OR as_of_shard <> :s OR position_key <= :k"
                ),
                ExpressionAttributeNames={"#i": "item"},
                ExpressionAttributeValues={
                    ":s": {"S": item.shard_id},
                    ":k": {"S": position_key(item.position)},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                log.debug("state item %s/%s is newer in the table: kept", item.rule, item.key)
                return
            raise TransportError(
                f"cannot save rule state of {shard_id} to table {self._table!r}: {exc}",
                retryable=_is_retryable(exc),
            ) from exc
        except BotoCoreError as exc:
            raise TransportError(
                f"cannot save rule state of {shard_id} to table {self._table!r}: {exc}",
                retryable=_is_retryable(exc),
            ) from exc
