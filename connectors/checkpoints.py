"""Per-shard checkpoints in a DynamoDB table, written so they never move backwards.

One item per (stream, shard): hash key ``stream``, range key ``shard_id``; attributes
``sequence_number`` (decimal string), ``sub_sequence_number`` (number), ``shard_ended`` (bool),
``updated_at`` (ISO 8601, UTC) and ``position_key``. With window rules, also the restore point
(``replay_*``, ``closed_through``, ``closes``) and, under the KCL daemon, the restore point of
the checkpoint being written to the lease table (the same names prefixed ``pending_``).

Sequence numbers are decimal strings of any length ("9" < "10" as numbers, not as strings), and
DynamoDB cannot compare a string attribute as a number inside a condition. So every save also
writes ``position_key``: the sequence number left-padded to 64 digits, ":", the sub-sequence
number padded to 10 digits. Those strings sort exactly like the positions they encode, and the
write is conditional on the stored key being smaller. A stale writer (an older task after a lease
move, a retried request) therefore cannot undo progress: its save is a no-op, not an error.

Once a shard is marked ended its item is final: the children of the shard may already be read.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, WaiterError
from botocore.exceptions import ConnectionError as BotoConnectionError

from streamproc.errors import ConfigError, TransportError
from streamproc.interfaces import Checkpoint, RestorePoint
from streamproc.records import Position

logger = logging.getLogger(__name__)

_SEQUENCE_DIGITS = 64  # Kinesis uses 56 digits today; 64 leaves room.
_SUB_SEQUENCE_DIGITS = 10  # KPL sub-sequence numbers are below 2**32.

_RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "LimitExceededException",
        "TransactionConflictException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)

# Never move backwards and never touch an ended shard. ``<`` for a plain save: saving the same
# position twice changes nothing; ``<=`` when ending: the same position may go ended=false→true.
_NOT_ENDED = "(attribute_not_exists(shard_ended) OR shard_ended = :false)"
_ADVANCE = f"{_NOT_ENDED} AND (attribute_not_exists(position_key) OR position_key < :key)"
_ADVANCE_AND_END = f"{_NOT_ENDED} AND (attribute_not_exists(position_key) OR position_key <= :key)"
# With window state: also at the same position once more windows were closed (idle/end closes).
_ADVANCE_OR_CLOSED = (
    f"{_NOT_ENDED} AND (attribute_not_exists(position_key) OR position_key < :key"
    " OR (position_key = :key AND (attribute_not_exists(closes) OR closes < :closes)))"
)


def position_key(position: Position) -> str:
    """The sortable string form of a position: string order equals numeric order."""
    if position.sequence_number < 0 or position.sub_sequence_number < 0:
        raise ValueError(f"negative position {position}")
    key = (
        f"{position.sequence_number:0{_SEQUENCE_DIGITS}d}:"
        f"{position.sub_sequence_number:0{_SUB_SEQUENCE_DIGITS}d}"
    )
    if len(key) != _SEQUENCE_DIGITS + 1 + _SUB_SEQUENCE_DIGITS:
        raise ValueError(f"position {position} has too many digits for a checkpoint key")
    return key


class DynamoDbCheckpointStore:
    """A :class:`~streamproc.interfaces.CheckpointStore` backed by one DynamoDB table.

    Contract:
    - ``load`` is a strongly consistent read; ``None`` for a shard never checkpointed.
    - ``save`` is one conditional write. It moves the checkpoint forward or does nothing
      (stale or repeated saves, saves after the shard ended); a refused condition is logged at
      debug level, never raised. Use :meth:`try_save` to learn whether it was stored.
    - ``save(..., position=None, shard_ended=True)`` marks a shard ended and keeps its position.
    - Throttling, server errors and connection failures raise ``TransportError(retryable=True)``;
      a missing table or any other refusal raises ``TransportError(retryable=False)``.

    Calls block for as long as the client's own retries and timeouts allow: give it a client
    configured with few retry attempts if the caller must not stall.
    """

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def load(self, stream: str, shard_id: str) -> Checkpoint | None:
        try:
            response = self._client.get_item(
                TableName=self._table, Key=_key(stream, shard_id), ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._transport_error("GetItem", stream, shard_id, exc) from exc
        item = response.get("Item")
        if item is None:
            return None
        position = None
        if "sequence_number" in item:
            sub_sequence = int(item.get("sub_sequence_number", {"N": "0"})["N"])
            position = Position.of(item["sequence_number"]["S"], sub_sequence)
        ended = bool(item.get("shard_ended", {"BOOL": False})["BOOL"])
        pending_position = None
        if "pending_sequence_number" in item:
            pending_position = Position.of(
                item["pending_sequence_number"]["S"],
                int(item.get("pending_sub_sequence_number", {"N": "0"})["N"]),
            )
        return Checkpoint(
            shard_id=shard_id,
            position=position,
            shard_ended=ended,
            restore=_restore(item, ""),
            pending_position=pending_position,
            pending_restore=_restore(item, "pending_") if pending_position is not None else None,
        )

    def save_pending(
        self, stream: str, shard_id: str, position: Position, restore: RestorePoint
    ) -> None:
        """One conditional write of the ``pending_*`` attributes (the stored checkpoint and its
        confirmed restore point stay as they are). Refused, silently, for an ended shard or a
        position behind the confirmed checkpoint. A pending point further on is replaced: it
        is a stale owner's (the daemon refuses its checkpoints once the lease moved), and the
        new owner, which starts at the daemon's lower checkpoint, must be able to write its
        own."""
        values: dict[str, Any] = {
            ":false": {"BOOL": False},
            ":seq": {"S": position.sequence},
            ":sub": {"N": str(position.sub_sequence_number)},
            ":key": {"S": position_key(position)},
        }
        sets, removed = _restore_update(restore, "pending_", values)
        update = (
            "SET pending_sequence_number = :seq, pending_sub_sequence_number = :sub,"
            " pending_position_key = :key, " + ", ".join(sets)
        )
        if removed:
            update += " REMOVE " + ", ".join(removed)
        condition = f"{_NOT_ENDED} AND (attribute_not_exists(position_key) OR position_key <= :key)"
        if not self._update(stream, shard_id, update, condition, values):
            logger.debug(
                "pending restore point %s/%s at %s not stored: ended, or behind the checkpoint",
                stream,
                shard_id,
                position,
            )

    def save(
        self,
        stream: str,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> None:
        self.try_save(stream, shard_id, position, shard_ended=shard_ended, restore=restore)

    def try_save(
        self,
        stream: str,
        shard_id: str,
        position: Position | None,
        *,
        shard_ended: bool = False,
        restore: RestorePoint | None = None,
    ) -> bool:
        """Like :meth:`save`; returns False when the condition refused the write."""
        now = datetime.now(UTC).isoformat()
        values: dict[str, Any] = {":false": {"BOOL": False}, ":now": {"S": now}}
        if position is None:
            if not shard_ended:
                return False  # nothing to record
            update = "SET shard_ended = :true, updated_at = :now"
            condition = _NOT_ENDED
            values[":true"] = {"BOOL": True}
        else:
            update = (
                "SET sequence_number = :seq, sub_sequence_number = :sub, position_key = :key,"
                " shard_ended = :ended, updated_at = :now"
            )
            condition = _ADVANCE_AND_END if shard_ended else _ADVANCE
            values.update(
                {
                    ":seq": {"S": position.sequence},
                    ":sub": {"N": str(position.sub_sequence_number)},
                    ":key": {"S": position_key(position)},
                    ":ended": {"BOOL": shard_ended},
                }
            )
            if restore is not None and not shard_ended:
                sets, removed = _restore_update(restore, "", values)
                update += ", " + ", ".join(sets)
                # The same position may be saved again after a window close (closes grew).
                condition = _ADVANCE_OR_CLOSED
            else:
                removed = [
                    "replay_sequence_number",
                    "replay_sub_sequence_number",
                    "closed_through",
                    "closes",
                ]
            if removed:
                update += " REMOVE " + ", ".join(removed)
        if self._update(stream, shard_id, update, condition, values):
            return True
        logger.debug(
            "checkpoint %s/%s not moved to %s (ended=%s): stored one is newer or ended",
            stream,
            shard_id,
            position,
            shard_ended,
        )
        return False

    def _update(
        self, stream: str, shard_id: str, update: str, condition: str, values: dict[str, Any]
    ) -> bool:
        """One conditional UpdateItem of the shard's item; False if the condition refused it."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_key(stream, shard_id),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise self._transport_error("UpdateItem", stream, shard_id, exc) from exc
        except BotoCoreError as exc:
            raise self._transport_error("UpdateItem", stream, shard_id, exc) from exc
        return True

    def _transport_error(
        self, operation: str, stream: str, shard_id: str, exc: Exception
    ) -> TransportError:
        where = f"checkpoint table {self._table!r}, stream {stream!r}, shard {shard_id}"
        if not isinstance(exc, ClientError):
            return TransportError(
                f"DynamoDB {operation} failed ({where}): {exc}", retryable=_is_retryable(exc)
            )
        code = _code(exc)
        if code == "ResourceNotFoundException":
            return TransportError(
                f"DynamoDB {operation}: {where}: the table does not exist; create it with "
                "connectors.checkpoints.ensure_table or point the config at an existing one",
                retryable=False,
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return TransportError(
            f"DynamoDB {operation} failed ({where}): {code}: {message}",
            retryable=_is_retryable(exc),
        )


def _restore_update(
    restore: RestorePoint, prefix: str, values: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """The SET clauses and REMOVEd attributes that store ``restore`` under ``prefix`` ("" or
    "pending_"), adding their values to ``values``; :func:`_restore` reads them back."""
    values[":closed"] = {"S": orjson.dumps(dict(restore.closed_through)).decode()}
    values[":closes"] = {"N": str(restore.closes)}
    sets = [f"{prefix}closed_through = :closed", f"{prefix}closes = :closes"]
    replay = [f"{prefix}replay_sequence_number", f"{prefix}replay_sub_sequence_number"]
    if restore.replay_from is None:
        return sets, replay
    values[":rseq"] = {"S": restore.replay_from.sequence}
    values[":rsub"] = {"N": str(restore.replay_from.sub_sequence_number)}
    return [*sets, f"{replay[0]} = :rseq", f"{replay[1]} = :rsub"], []


def _restore(item: dict[str, Any], prefix: str) -> RestorePoint | None:
    """The restore point stored in ``item`` under ``prefix`` ("" or "pending_"), if any."""
    if f"{prefix}closes" not in item and f"{prefix}replay_sequence_number" not in item:
        return None
    replay_from = None
    if f"{prefix}replay_sequence_number" in item:
        replay_from = Position.of(
            item[f"{prefix}replay_sequence_number"]["S"],
            int(item.get(f"{prefix}replay_sub_sequence_number", {"N": "0"})["N"]),
        )
    closed = orjson.loads(item.get(f"{prefix}closed_through", {"S": "{}"})["S"])
    return RestorePoint(
        replay_from=replay_from,
        closed_through={str(k): int(v) for k, v in closed.items()},
        closes=int(item.get(f"{prefix}closes", {"N": "0"})["N"]),
    )


def ensure_table(client: Any, table: str, *, wait_seconds: float = 120.0) -> None:
    """Create the checkpoint table (on-demand billing) unless it exists; wait until ACTIVE.

    Safe to call from several processes at once. Raises ``ConfigError`` if a table of that name
    exists with a different key schema, ``TransportError`` if DynamoDB cannot be reached.
    """
    try:
        try:
            description = client.describe_table(TableName=table)["Table"]
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
            description = None
        if description is None:
            try:
                client.create_table(
                    TableName=table,
                    BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[
                        {"AttributeName": "stream", "AttributeType": "S"},
                        {"AttributeName": "shard_id", "AttributeType": "S"},
                    ],
                    KeySchema=[
                        {"AttributeName": "stream", "KeyType": "HASH"},
                        {"AttributeName": "shard_id", "KeyType": "RANGE"},
                    ],
                )
                logger.info("created checkpoint table %s", table)
            except ClientError as exc:
                if _code(exc) != "ResourceInUseException":  # another process created it
                    raise
        delay = 1
        client.get_waiter("table_exists").wait(
            TableName=table,
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(wait_seconds / delay))},
        )
        description = client.describe_table(TableName=table)["Table"]
    except (ClientError, BotoCoreError) as exc:
        raise TransportError(
            f"cannot create or describe checkpoint table {table!r}: {exc}",
            retryable=_is_retryable(exc),
        ) from exc
    schema = {k["AttributeName"]: k["KeyType"] for k in description["KeySchema"]}
    if schema != {"stream": "HASH", "shard_id": "RANGE"}:
        raise ConfigError(
            "checkpoint_table",
            f"table {table!r} exists with key schema {schema}; a checkpoint table needs hash key"
            " 'stream' and range key 'shard_id' (choose another table name)",
        )


def _key(stream: str, shard_id: str) -> dict[str, Any]:
    return {"stream": {"S": stream}, "shard_id": {"S": shard_id}}


def _is_retryable(exc: Exception) -> bool:
    """Throttling, 5xx and transport failures (timeouts, resets, waiter timeouts) may pass."""
    if not isinstance(exc, ClientError):
        return isinstance(exc, BotoConnectionError | HTTPClientError | WaiterError)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return _code(exc) in _RETRYABLE_CODES or status >= 500


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
