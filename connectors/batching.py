"""The machinery every batched alert sink shares: buffer, batch, send, retry, park.

A sink subclass only knows its service: how to encode one alert as a request entry (and how big
AWS counts it), how to send one batch, and which error codes are worth retrying. Everything
else lives here, once:

- ``add`` encodes the alert and buffers it. No I/O, no blocking. An alert larger than the
  service's per-entry limit (or one that cannot be encoded) is queued for the dead-letter
  destination right away; it will never be sent.
- ``flush`` sends every entry that is due, in batches bounded by the service's entry *and* byte
  limits. A partially filled batch goes only when its oldest entry has waited ``linger_seconds``
  or when ``force=True``; full batches go at once. ``flush`` never sleeps.
- Each failed entry is classified by its error code. Retryable ones stay buffered with an attempt
  count and a backoff deadline (exponential, "equal jitter", on ``time.monotonic``); flushes skip
  them until they are due. Past ``max_attempts`` they are parked. Permanent ones are parked at once.
- A whole call that fails (throttling, 5xx, timeout, refused or dropped connection) counts as a
  retryable failure of every entry in it. When every entry of a batch failed retryably the sink
  holds *all* sending for a backoff period and stops the current flush: the service is unhappy
  and hammering it (or waiting on more connect timeouts) helps nobody. An entry is parked after
  ``max_attempts`` only if it was once *singled out* (it failed, with a code other than
  throttling, in a call where other entries got through); throttling and failures that hit
  every entry alike are an outage, waited out with backoff
  (the runtime's backpressure slows reading meanwhile) instead of parking every alert that
  arrives during it.
- Parking goes through the ``DeadLetterDestination``. If it raises, the entries stay buffered
  (still counted by ``pending``) and parking is retried on a later flush after a backoff.
  Their "parked" outcome is returned only once the destination has them: nothing is dropped.
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypedDict, Unpack

from botocore.exceptions import ClientError, ParamValidationError

from streamproc.errors import ConfigError
from streamproc.interfaces import DeadLetterDestination, Delivery, Outcome
from streamproc.records import Alert, DeadLetter

log = logging.getLogger(__name__)

# Codes that mean "overloaded or a hiccup, try again" on any AWS API (the union of botocore's
# throttling and transient lists). Each sink adds its own service-specific codes to this table.
COMMON_RETRYABLE_CODES: frozenset[str] = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
# Throttling says "too much, slow down", never "this entry is bad": an entry that fails with
# one of these is never singled out (see _Buffered.singled_out), so it is never parked for it.
THROTTLING_CODES: frozenset[str] = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "Throttled",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "SlowDown",
        "KMSThrottling",
        "KmsThrottled",
        "KMSThrottlingException",
    }
)


def is_throttling(code: str) -> bool:
    return code.rsplit("#", 1)[-1].rsplit(".", 1)[-1] in THROTTLING_CODES


# A whole call answered with one of these HTTP statuses is retryable whatever its code says.
RETRYABLE_HTTP_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class EntryFailure:
    """Why one entry (or a whole call) failed, and whether trying again can help."""

    code: str
    message: str
    retryable: bool

    def describe(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


# What a service said about one entry of a batch.
EntryResult: TypeAlias = Literal["sent", "duplicate"] | EntryFailure


def classify_call_error(exc: Exception, retryable_codes: frozenset[str]) -> EntryFailure:
    """Turn an exception from a service call into an :class:`EntryFailure`.

    ``ClientError``: retryable if its code is in ``retryable_codes`` (or the common table) or its
    HTTP status is 429/5xx; otherwise permanent (AccessDenied, ValidationException, ...).
    ``ParamValidationError`` (botocore refused the request before sending) is permanent.
    Everything else (refused/dropped connections, timeouts, credentials not yet available,
    unexpected library errors) is retryable: the attempt limit still ends it.
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # SQS's JSON protocol reports query-compatible codes such as
        # "AWS.SimpleQueueService.RequestThrottled"; others use "namespace#Code".
        bare = code.rsplit("#", 1)[-1].rsplit(".", 1)[-1]
        retryable = (
            bare in retryable_codes
            or bare in COMMON_RETRYABLE_CODES
            or code in retryable_codes
            or code in COMMON_RETRYABLE_CODES
            or status in RETRYABLE_HTTP_STATUSES
        )
        return EntryFailure(code, message, retryable)
    if isinstance(exc, ParamValidationError):
        return EntryFailure("ParamValidationError", str(exc), retryable=False)
    return EntryFailure(type(exc).__name__, str(exc), retryable=True)


def alert_dead_letter(alert: Alert, *, sink: str, reason: str) -> DeadLetter:
    """The dead letter for an alert a sink gave up on; ``data`` is the alert's JSON payload."""
    try:
        data = alert.to_json()
    except (TypeError, ValueError):  # a field orjson cannot encode: keep what we can
        data = repr(alert.payload()).encode()
    return DeadLetter(
        kind="alert",
        reason=reason,
        shard_id=alert.shard_id,
        sequence_number=alert.sequence_number,
        sub_sequence_number=alert.sub_sequence_number,
        sink=sink,
        rule=alert.rule,
        alert_id=alert.alert_id,
        data=data,
    )


class SinkOptions(TypedDict, total=False):
    """Tuning shared by every batched sink (all optional)."""

    max_attempts: int  # tries per entry before a retryable failure is parked (default 8)
    linger_seconds: float  # max wait of a partial batch without force (default 0.05)
    backoff_base: float  # first retry delay in seconds, doubled per attempt (default 0.2)
    backoff_max: float  # ceiling of one retry delay (default 20.0)
    clock: Callable[[], float]  # monotonic seconds (default time.monotonic)
    rng: random.Random  # jitter source (default a fresh Random)


@dataclass(slots=True)
class _Buffered:
    delivery: Delivery
    entry: dict[str, Any]
    size: int
    added_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0
    done: bool = False
    # True once the entry failed in a call where other entries got through: the failure is
    # about this entry, not an outage, so it may be parked after max_attempts.
    singled_out: bool = False


@dataclass(frozen=True, slots=True)
class _ToPark:
    delivery: Delivery
    letter: DeadLetter


class BatchingSink(ABC):
    """Base of the alert sinks: implements the ``Sink`` protocol over ``_encode`` and ``_send``.

    Subclasses set ``service`` and ``retryable_codes`` and pass their limits to ``__init__``.
    The sink is driven by one thread (the runtime loop); it is not thread-safe.
    """

    service: str = "service"
    retryable_codes: frozenset[str] = COMMON_RETRYABLE_CODES

    def __init__(
        self,
        *,
        name: str,
        dead_letter: DeadLetterDestination,
        max_batch_entries: int,
        max_batch_bytes: int,
        max_entry_bytes: int,
        **options: Unpack[SinkOptions],
    ) -> None:
        self.name = name
        self.max_batch_entries = max_batch_entries
        self.max_batch_bytes = max_batch_bytes
        self.max_entry_bytes = max_entry_bytes
        self._dead_letter = dead_letter
        self._max_attempts = options.get("max_attempts", 8)
        self._linger = options.get("linger_seconds", 0.05)
        self._backoff_base = options.get("backoff_base", 0.2)
        self._backoff_max = options.get("backoff_max", 20.0)
        self._clock = options.get("clock", time.monotonic)
        self._rng = options.get("rng") or random.Random()  # noqa: S311 - jitter, not secrets
        if self._max_attempts < 1:
            raise ConfigError(f"{name}.max_attempts", "must be at least 1")
        if min(self._linger, self._backoff_base, self._backoff_max) < 0:
            raise ConfigError(f"{name}.linger_seconds/backoff", "must not be negative")
        self._buffer: list[_Buffered] = []
        self._parking: list[_ToPark] = []
        self._hold_until = 0.0  # no sends before this (after a batch failed entirely)
        self._failed_calls = 0
        self._park_retry_at = 0.0
        self._park_failures = 0
        # Failed entry attempts so far (retried or parked), for the runtime's failure metric.
        self.failed_attempts = 0
        self._batch_seconds: list[float] = []

    # -- what a subclass provides -----------------------------------------------------------

    @abstractmethod
    def _encode(self, alert: Alert) -> tuple[dict[str, Any], int]:
        """The request entry for ``alert`` and its size as the service counts it. No I/O."""

    @abstractmethod
    def _send(self, entries: Sequence[dict[str, Any]]) -> list[EntryResult]:
        """Send one batch; return one result per entry, in order.

        Raise (botocore exceptions) when the whole call failed; the base classifies it.
        """

    # -- the Sink protocol ------------------------------------------------------------------

    def add(self, delivery: Delivery) -> None:
        """Buffer one delivery. Encodes it (CPU only); never does I/O, never blocks."""
        alert = delivery.alert
        try:
            entry, size = self._encode(alert)
        except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
            self._queue_park(delivery, f"alert cannot be encoded for {self.service}: {exc}")
            return
        if size > self.max_entry_bytes:
            reason = f"alert too large for {self.service} ({size} bytes > {self.max_entry_bytes})"
            self._queue_park(delivery, reason)
            return
        self._buffer.append(_Buffered(delivery, entry, size, self._clock()))

    def flush(self, *, force: bool = False) -> list[Outcome]:
        """Send what is due, park what was refused, return the outcomes decided by this call.

        Blocks for the service calls it makes (bounded by the client's timeouts and retries);
        never sleeps. Entries in backoff are skipped even with ``force``.
        """
        now = self._clock()
        outcomes: list[Outcome] = []
        if self._buffer and now >= self._hold_until:
            self._send_due(now, force, outcomes)
        if self._parking and now >= self._park_retry_at:
            self._park_queued(now, outcomes)
        return outcomes

    def take_batch_seconds(self) -> list[float]:
        """Durations of the service calls made since the last call (for a latency metric)."""
        taken, self._batch_seconds = self._batch_seconds, []
        return taken

    def pending(self) -> int:
        """Deliveries without an outcome yet: buffered, in backoff, or waiting to be parked."""
        return len(self._buffer) + len(self._parking)

    def retry_due_in(self) -> float | None:
        """Seconds until a ``flush`` can make progress (0.0: now); ``None`` if nothing pending.

        A hint for the runtime's sleep; entries in a partial batch are counted as due when their
        linger ends, which ``force=True`` does not wait for.
        """
        if not self._buffer and not self._parking:
            return None
        now = self._clock()
        candidates: list[float] = []
        if self._parking:
            candidates.append(self._park_retry_at)
        if self._buffer:
            due = sum(1 for b in self._buffer if b.next_attempt_at <= now)
            if due >= self.max_batch_entries:
                ready = now
            else:
                ready = min(max(b.next_attempt_at, b.added_at + self._linger) for b in self._buffer)
            candidates.append(max(ready, self._hold_until))
        return max(0.0, min(candidates) - now)

    def close(self) -> None:
        """Release resources. Sends nothing: flush with ``force=True`` until ``pending() == 0``."""
        if self.pending():
            log.warning("sink %s closed with %d deliveries pending", self.name, self.pending())

    # -- internals --------------------------------------------------------------------------

    def _send_due(self, now: float, force: bool, outcomes: list[Outcome]) -> None:
        due = [b for b in self._buffer if b.next_attempt_at <= now]
        for batch, full in self._batches(due):
            if not full and not force and now - min(b.added_at for b in batch) < self._linger:
                break  # only the last batch can be partial
            if not self._send_batch(batch, now, outcomes):
                break  # the service failed the whole batch: hold off, keep the rest buffered
        self._buffer = [b for b in self._buffer if not b.done]

    def _batches(self, due: list[_Buffered]) -> Iterator[tuple[list[_Buffered], bool]]:
        """Group ``due`` in order into batches within both limits; flag the full ones."""
        batch: list[_Buffered] = []
        size = 0
        for item in due:
            if batch and (
                len(batch) >= self.max_batch_entries or size + item.size > self.max_batch_bytes
            ):
                yield batch, True
                batch, size = [], 0
            batch.append(item)
            size += item.size
        if batch:
            yield batch, len(batch) >= self.max_batch_entries

    def _send_batch(self, batch: list[_Buffered], now: float, outcomes: list[Outcome]) -> bool:
        """Send one batch and settle each entry. False if every entry failed retryably."""
        try:
            started = time.perf_counter()
            try:
                results = self._send([b.entry for b in batch])
            finally:
                self._batch_seconds.append(time.perf_counter() - started)
        except Exception as exc:  # every call failure is classified; none escapes flush
            failure = classify_call_error(exc, self.retryable_codes)
            log.warning("sink %s: %s call failed: %s", self.name, self.service, failure.describe())
            results = [failure] * len(batch)
        if len(results) != len(batch):  # a response we do not understand: try again later
            message = f"{len(results)} results for {len(batch)} entries"
            results = [EntryFailure("IncompleteResponse", message, retryable=True)] * len(batch)
        unhappy = all(isinstance(r, EntryFailure) and r.retryable for r in results)
        if unhappy:
            self._failed_calls += 1
            self._hold_until = now + self._backoff(self._failed_calls)
        else:
            self._failed_calls = 0
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, EntryFailure):
                item.singled_out = item.singled_out or (
                    not unhappy and not is_throttling(result.code)
                )
                self._settle_failure(item, result, now)
            else:
                item.done = True
                alert_id = item.delivery.alert.alert_id
                outcomes.append(Outcome(item.delivery.delivery_id, alert_id, result))
        return not unhappy

    def _settle_failure(self, item: _Buffered, failure: EntryFailure, now: float) -> None:
        item.attempts += 1
        self.failed_attempts += 1
        if failure.retryable and (item.attempts < self._max_attempts or not item.singled_out):
            # Past max_attempts an entry is parked only if it was singled out: failures that
            # hit every entry alike (throttling, outage, unreachable) are waited out instead.
            item.next_attempt_at = max(now + self._backoff(item.attempts), self._hold_until)
            return
        item.done = True
        if failure.retryable:
            reason = (
                f"{self.service} kept failing after {item.attempts} attempts: {failure.describe()}"
            )
        else:
            reason = f"{self.service} refused the alert: {failure.describe()}"
        self._queue_park(item.delivery, reason)

    def _queue_park(self, delivery: Delivery, reason: str) -> None:
        letter = alert_dead_letter(delivery.alert, sink=self.name, reason=reason)
        self._parking.append(_ToPark(delivery, letter))

    def _park_queued(self, now: float, outcomes: list[Outcome]) -> None:
        try:
            self._dead_letter.park([p.letter for p in self._parking])
        except Exception as exc:  # TransportError by contract; anything else must not lose them
            self._park_failures += 1
            self._park_retry_at = now + self._backoff(self._park_failures)
            log.warning(
                "sink %s: dead-letter destination failed, %d entries kept: %s",
                self.name,
                len(self._parking),
                exc,
            )
            return
        self._park_failures = 0
        for parked in self._parking:
            delivery = parked.delivery
            outcomes.append(
                Outcome(
                    delivery.delivery_id, delivery.alert.alert_id, "parked", parked.letter.reason
                )
            )
        self._parking = []

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        ceiling = min(self._backoff_max, self._backoff_base * 2.0 ** min(attempt - 1, 30))
        return ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)
