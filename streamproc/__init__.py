"""streamproc: real-time rules over Kinesis streams, with alerts delivered once.

Rule modules import what they need from here::

    from streamproc import rule, window_rule
    from streamproc import model_rule          # loads the model libraries on first use
"""

from typing import Any

from streamproc.errors import (
    BackpressureError,
    ConfigError,
    RecordError,
    RuleCompileError,
    StreamprocError,
    TransportError,
)
from streamproc.inventory import inventory_rule
from streamproc.ruleset import predicate_rule, rule, window_rule

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: importing streamproc must not load the model libraries (numpy, the GBT library)
    # for deployments without model rules.
    if name == "model_rule":
        from streamproc.modelrule import model_rule

        return model_rule
    raise AttributeError(f"module 'streamproc' has no attribute {name!r}")


__all__ = [
    "BackpressureError",
    "ConfigError",
    "RecordError",
    "RuleCompileError",
    "StreamprocError",
    "TransportError",
    "__version__",
    "inventory_rule",
    "model_rule",
    "predicate_rule",
    "rule",
    "window_rule",
]
