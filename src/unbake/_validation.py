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

A class can declare its hyperparameters as typed fields instead, each with its default,
one line of help and its constraints (:func:`hyperparameter`), and take its keyword-only
constructor and ``_parameter_constraints`` from them (:func:`declared`); a subclass
inherits the fields, so two classes that share hyperparameters declare them once.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from unbake.exceptions import InvalidParameterError

__all__ = [
    "Interval",
    "Options",
    "declared",
    "describe",
    "hyperparameter",
    "validate_params",
]

C = TypeVar("C", bound="type[Any]")

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: the marker only tells type checkers what declared() makes

    def dataclass_transform(**_kwargs: Any) -> Callable[[Any], Any]:
        return lambda decorator: decorator


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


def hyperparameter(default: Any, *, help: str, constraints: list[Any]) -> Any:
    """A typed hyperparameter field: its default, one line of ``help`` and its constraints.

    Use it on a class decorated with :func:`declared`.
    """
    return field(default=default, metadata={"help": help, "constraints": list(constraints)})


@dataclass_transform(
    kw_only_default=True, eq_default=False, field_specifiers=(hyperparameter, field)
)
def declared(cls: C) -> C:
    """Give ``cls`` a keyword-only constructor from its :func:`hyperparameter` fields.

    The constructor only stores the values (no work, no checks); the fields' constraints
    become ``cls._parameter_constraints``, which :func:`validate_params` checks at the
    door. Fields of a declared base class come first. Instances compare by identity.

    >>> @declared
    ... class Knobs:
    ...     lr: float = hyperparameter(0.1, help="step size", constraints=[Interval(float, 0, None)])
    >>> Knobs(lr=0.5).lr, list(Knobs._parameter_constraints)
    (0.5, ['lr'])
    """
    dataclass(kw_only=True, eq=False)(cls)  # decorates cls in place (no slots)
    cls._parameter_constraints = {
        f.name: list(f.metadata["constraints"]) for f in fields(cls) if "constraints" in f.metadata
    }
    return cls
