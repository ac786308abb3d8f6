"""KPL aggregation: one Kinesis record that packs many user records (protobuf + MD5 digest).

De-aggregation uses aws_kinesis_agg, which swallows errors: a record whose digest or protobuf is
bad comes back unchanged, but one that parses and then fails while being split (a partition key
index out of range, say) is printed to stderr, raw data included, and partly or wholly dropped.
So an aggregate is validated here first and the library's output is counted; anything that does
not add up is reported as "not an aggregate" and the caller passes the record through whole,
where it fails decoding and is dead-lettered with the reason instead of vanishing.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

# The library's generated ``messages_pb2`` does ``import config_pb2`` and only works after
# ``deaggregator`` (or ``aggregator``) put the package directory on sys.path; so it is reached
# through ``deaggregator``, which is therefore always imported first.
from aws_kinesis_agg import DIGEST_SIZE, MAGIC, deaggregator

_MAGIC: bytes = MAGIC
_DIGEST_SIZE: int = DIGEST_SIZE


def has_kpl_header(data: bytes) -> bool:
    """True if ``data`` starts with the KPL magic bytes (it claims to be an aggregate)."""
    return data[: len(_MAGIC)] == _MAGIC


def deaggregate(kinesis_record: Mapping[str, Any]) -> list[tuple[str, bytes]] | None:
    """Split a boto3 GetRecords record into (partition key, data) pairs, in sub-sequence order.

    ``None`` if the record is not a well-formed aggregate (see the module docstring); a valid
    aggregate of zero records is treated as malformed too (the KPL never writes one).
    """
    expected = aggregate_size(kinesis_record["Data"])
    if not expected:
        return None
    parts: list[tuple[str, bytes]] = []
    for user_record in deaggregator.iter_deaggregate_records(kinesis_record, data_format="Boto3"):
        fields = user_record["kinesis"]
        if not fields.get("aggregated"):
            return None
        # The library re-encodes sub-record data as base64 (Lambda's convention).
        parts.append((fields["partitionKey"], base64.b64decode(fields["data"])))
    return parts if len(parts) == expected else None


def aggregate_size(data: bytes) -> int | None:
    """Number of user records in a well-formed KPL aggregate, ``None`` if malformed."""
    if not has_kpl_header(data):
        return None
    body = data[len(_MAGIC) :]
    if len(body) <= _DIGEST_SIZE:
        return None
    message, digest = body[:-_DIGEST_SIZE], body[-_DIGEST_SIZE:]
    if hashlib.md5(message, usedforsecurity=False).digest() != digest:
        return None
    aggregate = deaggregator.messages_pb2.AggregatedRecord()
    try:
        aggregate.ParseFromString(message)
    except Exception:  # google.protobuf.message.DecodeError; protobuf ships no type hints
        return None
    keys = len(aggregate.partition_key_table)
    hash_keys = len(aggregate.explicit_hash_key_table)
    for entry in aggregate.records:
        if entry.partition_key_index >= keys:
            return None
        if hash_keys and entry.explicit_hash_key_index >= hash_keys:
            return None
    return len(aggregate.records)
