"""streamproc: real-time rules over Kinesis streams, with alerts delivered once.

Rule modules import what they need from here::

    from streamproc import rule, window_rule
"""

from streamproc.errors import (
    BackpressureError,
    ConfigError,
    RecordError,
    RuleCompileError,
    StreamprocError,
    TransportError,
)
from streamproc.ruleset import predicate_rule, rule, window_rule

__version__ = "0.1.0"

__all__ = [
    "BackpressureError",
    "ConfigError",
    "RecordError",
    "RuleCompileError",
    "StreamprocError",
    "TransportError",
    "__version__",
    "predicate_rule",
    "rule",
    "window_rule",
]
