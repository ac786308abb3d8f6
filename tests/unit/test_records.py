"""The values of the pipeline: the quicker ``__init__`` of the frozen dataclasses made per record
and per alert (records.quick_init) behaves as the one ``@dataclass`` writes."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from streamproc.records import Alert, DeadLetter, Record, quick_init
from streamproc.windows import WindowResult


def _reference(cls: type[Any]) -> type[Any]:
    """The same fields, with the ``__init__`` that ``@dataclass`` writes."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(cls)]
    made: type[Any] = dataclasses.make_dataclass(
        f"Reference{cls.__name__}",
        [(name, kind, dataclasses.field(default=f.default)) for name, kind, f in fields],
        frozen=True,
        slots=True,
    )
    return made


def _values(cls: type[Any]) -> dict[str, Any]:
    """A distinct value for every field of ``cls``."""
    return {f.name: (f.name, index) for index, f in enumerate(dataclasses.fields(cls))}


def _parameters(cls: type[Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(cls).parameters.values()]


@pytest.mark.parametrize("cls", [Record, Alert, WindowResult])
def test_quick_init_takes_the_same_arguments_and_sets_every_field(cls: type[Any]) -> None:
    reference = _reference(cls)
    assert _parameters(cls) == _parameters(reference)
    values = _values(cls)
    by_name = cls(**values)
    by_position = cls(*values.values())
    assert dataclasses.asdict(by_name) == dataclasses.asdict(reference(**values)) == values
    assert by_position == by_name
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    defaulted = cls(**{name: values[name] for name in required})
    assert dataclasses.asdict(defaulted) == dataclasses.asdict(
        reference(**{name: values[name] for name in required})
    )


@pytest.mark.parametrize("cls", [Record, Alert, WindowResult])
def test_quick_init_objects_stay_frozen_and_refuse_wrong_arguments(cls: type[Any]) -> None:
    values = _values(cls)
    made = cls(**values)
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, first, "changed")
    with pytest.raises(TypeError, match="missing"):
        cls()
    with pytest.raises(TypeError, match="unexpected keyword"):
        cls(**values, surplus=1)
    assert getattr(made, first) == values[first]
    # set through a subclass that allows it for the time of __init__: made a cls again after
    assert type(made) is cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(made, first)


def test_quick_init_builds_an_instance_of_a_subclass_as_that_subclass() -> None:
    """A subclass that inherits the quick __init__ keeps its own type (its objects are set
    field by field through the slots instead)."""

    class Tagged(Record):
        __slots__ = ()

    made = Tagged(b"{}", "key", "1", 0, 5, "shard-1")
    assert type(made) is Tagged
    assert (made.data, made.shard_id, made.arrival_ms) == (b"{}", "shard-1", 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.data = b"changed"  # type: ignore[misc]


def test_quick_init_refuses_a_class_it_cannot_build() -> None:
    """A default factory (DeadLetter.at) would be shared, not called: refused at import."""
    with pytest.raises(TypeError, match="cannot set positionally"):
        quick_init(DeadLetter)
