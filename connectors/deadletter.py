"""Dead-letter destinations: where refused records and alerts go, with the reason.

Both implement ``streamproc.interfaces.DeadLetterDestination``: ``park`` returns only when every
entry is stored and raises ``TransportError`` otherwise; the caller keeps the entries and parks
them again later. A retried ``park`` may store some entries twice: dead letters are delivered
*at least once*, and each carries its alert id / shard position so duplicates are recognisable.
A dead-letter destination never refuses an entry for its content: an entry too large to store
is truncated and says so in its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from connectors.batching import classify_call_error
from connectors.sqs import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_BATCH_BYTES,
    MAX_ENTRIES,
    RETRYABLE_CODES,
    fifo_id,
)
from streamproc.errors import TransportError
from streamproc.records import DeadLetter

_REASON_KEEP = 2000  # characters of an over-long reason kept when an entry must be shrunk


class SqsDeadLetter:
    """Parks dead letters in an SQS queue, one message per entry (body = ``DeadLetter`` JSON).

    ``park`` sends SendMessageBatch calls of at most 10 entries (and ``max_batch_bytes``); an
    entry that fails (per entry or with its whole call) is re-sent up to ``attempts`` times in
    a row, without sleeping (the client's own retries already back off on throttling). If some
    entry still fails, ``park`` raises ``TransportError`` - entries of earlier calls may already
    be stored and will be sent again when the caller retries (at least once, see the module
    docstring). ``park`` blocks for those calls. A body above ``max_message_bytes`` has its
    ``data`` truncated and the reason says so. On a FIFO queue the group is the shard id and
    the deduplication id a hash of the body, so a re-sent entry is dropped by SQS.
    """

    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        attempts: int = 3,
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._max_message_bytes = min(max_message_bytes, max_batch_bytes)
        self._max_batch_bytes = max_batch_bytes
        self._attempts = max(1, attempts)
        self._fifo = queue_url.endswith(".fifo")

    def park(self, entries: Sequence[DeadLetter]) -> None:
        bodies = [self._body(letter) for letter in entries]
        for chunk in self._chunks(bodies):
            self._send_chunk(chunk)

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    def _body(self, letter: DeadLetter) -> tuple[str, str]:
        """The message body of ``letter`` (shrunk to fit) and its FIFO group id."""
        body = letter.to_json()
        if len(body) > self._max_message_bytes:
            body = shrink(letter, self._max_message_bytes).to_json()
        return body.decode(), fifo_id(letter.shard_id or letter.kind)

    def _chunks(self, bodies: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
        chunk: list[tuple[str, str]] = []
        size = 0
        for body in bodies:
            length = len(body[0].encode())
            if chunk and (len(chunk) >= MAX_ENTRIES or size + length > self._max_batch_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(body)
            size += length
        if chunk:
            yield chunk

    def _entry(self, index: int, body: str, group: str) -> dict[str, str]:
        entry = {"Id": str(index), "MessageBody": body}
        if self._fifo:
            entry["MessageGroupId"] = group
            entry["MessageDeduplicationId"] = hashlib.blake2b(
                body.encode(), digest_size=16
            ).hexdigest()
        return entry

    def _send_chunk(self, chunk: list[tuple[str, str]]) -> None:
        remaining = dict(enumerate(chunk))
        problem = "no attempt made"
        retryable = True
        for _ in range(self._attempts):
            request = [
                self._entry(index, body, group) for index, (body, group) in remaining.items()
            ]
            try:
                response = self._client.send_message_batch(
                    QueueUrl=self._queue_url, Entries=request
                )
            except Exception as exc:  # any failure of the call: retry, then report
                failure = classify_call_error(exc, RETRYABLE_CODES)
                problem, retryable = failure.describe(), failure.retryable
                if not retryable:
                    break  # no such queue, access denied: retrying at once cannot help
                continue
            for success in response.get("Successful", []):
                remaining.pop(int(success["Id"]), None)
            if not remaining:
                return
            failed = response.get("Failed", [])
            if failed:
                problem = f"{failed[0].get('Code')}: {failed[0].get('Message')}"
                retryable = all(not f.get("SenderFault", False) for f in failed)
        raise TransportError(
            f"dead-letter queue {self._queue_url} did not store {len(remaining)} of {len(chunk)} "
            f"entries ({problem}); the caller keeps them and parks them again later",
            retryable=retryable,
        )


def shrink(letter: DeadLetter, max_bytes: int) -> DeadLetter:
    """``letter`` with its ``data`` cut so its JSON fits ``max_bytes``; the reason says so."""
    original = len(letter.data)
    reason = letter.reason[:_REASON_KEEP]
    note = " [data truncated from {original} to {kept} bytes to fit the dead-letter destination]"
    # Size the envelope with the widest numbers the note can hold, then fill the rest with data.
    widest = replace(
        letter, reason=reason + note.format(original=original, kept=original), data=b""
    )
    room = max_bytes - len(widest.to_json())
    kept = max(0, room) // 4 * 3  # data is stored base64: 4 characters per 3 bytes
    return replace(
        letter,
        reason=reason + note.format(original=original, kept=kept),
        data=letter.data[:kept],
    )


class FileDeadLetter:
    """Appends dead letters to a local file, one ``DeadLetter`` JSON object per line.

    ``park`` writes all its entries with one write, then flushes and fsyncs before returning,
    so a returned ``park`` survives a crash. It creates the parent directories on first use.
    Any ``OSError`` becomes ``TransportError``; a partially written tail is cut off again so
    the file never holds half a line, and the file is reopened on the next call. Safe to share
    between sinks and threads (one lock).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: io.FileIO | None = None  # unbuffered: nothing left to flush after a failure
        self._lock = threading.Lock()

    def park(self, entries: Sequence[DeadLetter]) -> None:
        if not entries:
            return
        data = b"".join(letter.to_json() + b"\n" for letter in entries)
        with self._lock:
            try:
                self._append(data)
            except OSError as exc:
                self._close_file()
                raise TransportError(
                    f"cannot write dead letters to {self.path}: {exc}; check the path and free "
                    "space - the entries are kept and parked again later",
                    retryable=True,
                ) from exc

    def close(self) -> None:
        with self._lock:
            self._close_file()

    def _append(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = io.FileIO(self.path, "ab")
        handle = self._file
        start = handle.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[handle.write(view) :]
            os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(handle.fileno(), start)
            raise

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
