"""Declared parameter constraints and the one validator that checks them.

A constraint is one of:

* ``Interval(type, low, high, closed=...)`` for numbers;
* ``Options({...})`` for a fixed set of strings;
* a Python type (``bool``, ``str``, ``int``, ...);
* ``None`` (the value may be ``None``).

A parameter passes when it satisfies any constraint in its list, and otherwise
raises :class:`~unbake.exceptions.InvalidParameterError` with one message
template::

    The 'lr' parameter of SCRUB must be a float in (0, inf). Got -1 instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from unbake.exceptions import InvalidParameterError

__all__ = ["Interval", "Options", "describe", "validate_params"]


@dataclass(frozen=True)
class Interval:
    """A numeric interval. ``closed`` is one of 'left', 'right', 'both', 'neither'."""

    type: type
    low: float | None
    high: float | None
    closed: str = "both"

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.type is int and not isinstance(value, numbers.Integral):
            return False
        if self.type is float and not isinstance(value, numbers.Real):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        lo_ok = (
            self.low is None
            or value > self.low
            or (value == self.low and self.closed in ("left", "both"))
        )
        hi_ok = (
            self.high is None
            or value < self.high
            or (value == self.high and self.closed in ("right", "both"))
        )
        return lo_ok and hi_ok

    def __str__(self) -> str:
        left = "[" if self.closed in ("left", "both") and self.low is not None else "("
        right = "]" if self.closed in ("right", "both") and self.high is not None else ")"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        noun = "an int" if self.type is int else "a float"
        return f"{noun} in {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Options:
    """A value from a fixed set."""

    values: frozenset[Any]

    def __init__(self, values: Iterable[Any]) -> None:
        object.__setattr__(self, "values", frozenset(values))

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:
            return False

    def __str__(self) -> str:
        return "one of {" + ", ".join(repr(v) for v in sorted(self.values, key=str)) + "}"


def _satisfies(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        if constraint is float:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)
        if constraint is int:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return isinstance(value, constraint)
    return constraint.is_satisfied_by(value)


def describe(constraint: Any) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return {"bool": "a bool", "str": "a str", "int": "an int", "float": "a float"}.get(
            constraint.__name__, f"an instance of {constraint.__name__}"
        )
    return str(constraint)


def validate_params(
    params: Mapping[str, Any], constraints: Mapping[str, list[Any]], owner: str
) -> None:
    """Check every entry of ``params`` against its declared ``constraints``."""
    for name, value in params.items():
        if name not in constraints:
            continue
        options = constraints[name]
        if any(_satisfies(c, value) for c in options):
            continue
        allowed = " or ".join(describe(c) for c in options)
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be {allowed}. Got {value!r} instead."
        )
