"""Reorder thresholds per product from a DynamoDB table, cached and refreshed in the background.

    from streamproc import inventory_rule
    from streamproc.thresholds import ThresholdTable

    low_stock = inventory_rule(
        name="low_stock",
        reorder_threshold=ThresholdTable("inventory-thresholds", refresh_s=300),
        default_threshold=10,          # products the table does not list
    )

The table has hash key ``product_id`` (S) and a number attribute ``reorder_threshold``. The first
lookup reads the whole table (Scan); after that a background thread re-reads it every
``refresh_s`` seconds and swaps the cache in one step, so lookups never wait on DynamoDB. A
failed refresh is logged and the previous thresholds stay in use. A changed threshold applies
to events processed after the refresh (a replay after a restart uses the thresholds of then).
Region and endpoint default to ``STREAMPROC__AWS__REGION`` / ``STREAMPROC__AWS__ENDPOINT_URL``
(then AWS's usual configuration).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)


class ThresholdTable:
    def __init__(
        self,
        table: str,
        *,
        refresh_s: float = 300.0,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.table = table
        self.refresh_s = refresh_s
        self._region = region or os.environ.get("STREAMPROC__AWS__REGION") or None
        self._endpoint = endpoint_url or os.environ.get("STREAMPROC__AWS__ENDPOINT_URL") or None
        self._client = client
        self._cache: dict[str, float] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self.failures = 0

    def __call__(self, store: str, product: str) -> float | None:
        del store  # thresholds are per product
        cache = self._cache
        if cache is None:
            with self._lock:
                if self._cache is None:
                    self._cache = self._read()  # the first lookup waits for the table once
                    self._start()
                cache = self._cache
        return cache.get(product)

    def refresh(self) -> bool:
        """Re-read the table now; False (and the old thresholds kept) if that failed."""
        try:
            fresh = self._read()
        except Exception as exc:  # any failure keeps the thresholds we have
            self.failures += 1
            log.error(
                "thresholds table %s: refresh failed, keeping the old ones: %s", self.table, exc
            )
            return False
        self._cache = fresh
        return True

    def close(self) -> None:
        self._stop.set()

    def _start(self) -> None:
        if self._thread is None and self.refresh_s > 0:
            self._thread = threading.Thread(
                target=self._loop, name=f"thresholds-{self.table}", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def _read(self) -> dict[str, float]:
        client = self._client
        if client is None:
            import boto3

            client = self._client = boto3.client(
                "dynamodb", region_name=self._region, endpoint_url=self._endpoint
            )
        out: dict[str, float] = {}
        kwargs: dict[str, Any] = {"TableName": self.table}
        try:
            while True:
                page = client.scan(**kwargs)
                for item in page.get("Items", []):
                    if "product_id" in item and "reorder_threshold" in item:
                        out[item["product_id"]["S"]] = float(item["reorder_threshold"]["N"])
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise RuntimeError(f"cannot read thresholds table {self.table!r}: {exc}") from exc
        self.refreshes += 1
        log.info("thresholds table %s: %d products", self.table, len(out))
        return out
