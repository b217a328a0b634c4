"""Declared parameter constraints (scikit-learn's `_param_validation`, in small).

A settings dataclass declares each field's bounds once, in the field's metadata; ``validate_fields`` checks
them all in ``__post_init__`` and raises :class:`~nullviz.core.errors.InvalidParameterError` with one sentence
shape. Tests generate bad values from the same declarations (``invalid_value``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameterError


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``None`` means unbounded on that side."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right", "neither"

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float and not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        kind = "an int" if self.kind is int else "a float"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{kind} in the range {left}{low}, {high}{right}"

    def invalid_value(self) -> Any:
        if self.low is not None:
            return self.low - 1
        if self.high is not None:
            return self.high + 1
        return "not a number"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def invalid_value(self) -> Any:
        return "not-" + "-".join(self.values)


def bounded(default: Any, constraint: Interval | Options) -> Any:
    """A dataclass field with a declared constraint."""
    return dataclasses.field(default=default, metadata={"constraint": constraint})


def check(name: str, caller: str, value: Any, constraint: Interval | Options) -> None:
    """Raise InvalidParameterError unless ``value`` satisfies ``constraint``."""
    if not constraint.is_satisfied_by(value):
        raise InvalidParameterError(name, caller, str(constraint), value)


def validate_fields(obj: Any) -> None:
    """Check every field of dataclass ``obj`` that declares a constraint."""
    caller = type(obj).__name__
    for f in dataclasses.fields(obj):
        constraint = f.metadata.get("constraint")
        if constraint is not None:
            check(f.name, caller, getattr(obj, f.name), constraint)


def constraints_of(cls: type) -> dict[str, Interval | Options]:
    """The declared constraints of a settings dataclass, by field name (for tests and UIs)."""
    return {f.name: f.metadata["constraint"] for f in dataclasses.fields(cls) if "constraint" in f.metadata}
