"""Snapshots of rule state that replay cannot rebuild (inventory stock), in DynamoDB.

One item per (stream, shard, rule, key): hash key ``shard`` = ``<stream>/<shard_id>``, range
key ``item`` = ``<rule>/<key>``; attributes ``value`` (the state as JSON), ``sequence_number``
and ``sub_sequence_number`` (the last record of that key the value counts). The runtime writes
the items that changed, as of a settled position, before it checkpoints that position; writes
are idempotent (the same value for the same position), so a retried or repeated save is
harmless.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from connectors.checkpoints import _is_retryable
from streamproc.errors import TransportError
from streamproc.records import Position
from streamproc.stateful import StateItem

log = logging.getLogger(__name__)

_BATCH = 25  # BatchWriteItem limit


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
                            shard_id=shard_id,
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
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "shard": {"S": f"{self._stream}/{item.shard_id}"},
                        "item": {"S": f"{item.rule}/{item.key}"},
                        "value": {"S": orjson.dumps(dict(item.value)).decode()},
                        "sequence_number": {"S": item.position.sequence},
                        "sub_sequence_number": {"N": str(item.position.sub_sequence_number)},
                    }
                }
            }
            for item in items
        ]
        try:
            for start in range(0, len(requests), _BATCH):
                pending = requests[start : start + _BATCH]
                for attempt in range(8):
                    response = self._client.batch_write_item(RequestItems={self._table: pending})
                    pending = response.get("UnprocessedItems", {}).get(self._table, [])
                    if not pending:
                        break
                    time.sleep(min(1.0, 0.05 * 2**attempt))  # DynamoDB asks for a backoff
                if pending:
                    raise TransportError(
                        f"{len(pending)} state items of {shard_id} stayed unprocessed",
                        retryable=True,
                    )
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(
                f"cannot save rule state of {shard_id} to table {self._table!r}: {exc}",
                retryable=_is_retryable(exc),
            ) from exc
