"""boto3 clients configured the way every streamproc connector wants them.

Timeouts are short (connect 5 s, read 10 s) because all I/O runs in the one runtime loop: a hung
call stalls every shard. botocore's own retries are kept ("standard" mode, 3 attempts in total):
they retry a *whole call* that failed with throttling, a 5xx or a dropped connection, which is
cheap and smooths over blips. They never look inside a successful (HTTP 200) batch response, so
per-entry failures of PutEvents/PublishBatch/SendMessageBatch are retried by our own code
(``connectors.batching``) with its own backoff, attempt limit and dead-lettering. Keeping
botocore's attempt count low bounds how long one flush can block before our code takes over.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

DEFAULT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=10,
    retries={"mode": "standard", "total_max_attempts": 3},
)
# For tests that inject faults: one attempt, so botocore's retries never hide a fault.
NO_RETRIES = Config(connect_timeout=1, retries={"mode": "standard", "total_max_attempts": 1})


def make_client(service: str, *, region: str, endpoint_url: str | None = None, **kw: Any) -> Any:
    """A boto3 client for ``service`` with :data:`DEFAULT_CONFIG`.

    ``kw`` goes to ``boto3.client`` (credentials, ...); a ``config=Config(...)`` there is merged
    over the defaults (its values win). Creating a client does no network I/O.
    """
    config = DEFAULT_CONFIG.merge(kw.pop("config")) if "config" in kw else DEFAULT_CONFIG
    return boto3.client(service, region_name=region, endpoint_url=endpoint_url, config=config, **kw)
