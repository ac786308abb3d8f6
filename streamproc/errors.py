"""The one error hierarchy of streamproc.

Every error the framework raises on purpose derives from :class:`StreamprocError`, so a caller
can catch "anything streamproc refused" in one place. Messages say what was wrong and what to do.
Bad *input data* is never an exception that escapes the loop: it becomes a dead letter.
"""

from __future__ import annotations


class StreamprocError(Exception):
    """Root of every error streamproc raises deliberately."""


class ConfigError(StreamprocError):
    """A configuration value is missing or invalid. Raised at start, before any I/O."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key {key!r}: {problem}")
        self.key = key
        self.problem = problem


class RuleCompileError(StreamprocError):
    """A rule could not be compiled. Carries the location so editors and CI can point at it."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        rule: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.rule = rule
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        rule = f"rule {self.rule!r}: " if self.rule else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}{rule}{self.message}{hint}"


class RecordError(StreamprocError):
    """A record cannot be processed (bad JSON, too big, too deep, missing field).

    Raised inside the hot path and turned into a dead letter by the shard processor; it never
    stops a shard.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingFieldError(RecordError):
    """A rule needs a field that the record does not have."""

    def __init__(self, field: str) -> None:
        super().__init__(f"missing field {field!r}")
        self.field = field


class TransportError(StreamprocError):
    """A call to an external service failed.

    ``retryable`` tells the caller whether trying again later can succeed (throttling, timeouts,
    connection resets) or not (access denied, validation errors).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class BackpressureError(StreamprocError):
    """A component cannot take more work now; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
