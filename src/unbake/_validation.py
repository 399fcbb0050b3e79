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

A class declares its hyperparameters once, as typed fields, each with its default, one
line of help and its constraints (:func:`hyperparameter`), and takes its keyword-only
constructor and ``_parameter_constraints`` from them (:func:`declared`, or by extending
:class:`Declared`, as every method and training strategy does). A subclass inherits the
fields; a hyperparameter that several classes share with different defaults is declared
once as a :class:`Hyperparameter`. ``unbake methods``, the docs' methods table and the
validator all read the declaration (:func:`parameters`).
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

from unbake.exceptions import InvalidParameterError

__all__ = [
    "Declared",
    "Hyperparameter",
    "Interval",
    "Options",
    "allowed",
    "declared",
    "describe",
    "fixed",
    "get_params",
    "hyperparameter",
    "parameters",
    "set_params",
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


class IsCallable:
    """A function (any callable)."""

    def is_satisfied_by(self, value: Any) -> bool:
        return callable(value)

    def __str__(self) -> str:
        return "a function"


class JSONValue:
    """Any value that JSON can hold (numbers, strings, lists, dicts, booleans, null)."""

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return "JSON (numbers, strings, lists, dicts)"


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
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be {allowed(options)}. Got {value!r} instead."
        )


def allowed(constraints: Iterable[Any]) -> str:
    """What a parameter with ``constraints`` may be, as the validator's message says it.

    >>> allowed([Interval(int, 1, None, closed="left"), None])
    'an int in [1, inf) or None'
    """
    return " or ".join(describe(c) for c in constraints)


def hyperparameter(default: Any, *, help: str, constraints: Iterable[Any]) -> Any:
    """A typed hyperparameter field: its default, one line of ``help`` and its constraints.

    Use it on a class decorated with :func:`declared` or extending :class:`Declared`.
    """
    return field(default=default, metadata={"help": help, "constraints": list(constraints)})


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter that several classes share: its help and constraints, declared
    once; each class calls it with its own default to declare its field.

    >>> EPOCHS = Hyperparameter("Passes over the data.", [Interval(int, 0, None)])
    >>> @declared
    ... class Short:
    ...     epochs: int = EPOCHS(1)
    >>> Short().epochs, Short._parameter_constraints["epochs"] == EPOCHS.constraints
    (1, True)
    """

    help: str
    constraints: list[Any]

    def __call__(self, default: Any) -> Any:
        return hyperparameter(default, help=self.help, constraints=self.constraints)


def fixed(default: Any, *, init: Literal[False] = False) -> Any:
    """Redeclare an inherited hyperparameter as fixed at ``default``: the subclass's
    constructor no longer takes it (e.g. ``sisa_lora``'s aggregation, always the mean).

    ``init`` is there for type checkers only (a field specifier that is not an argument).
    """
    return field(default=default, init=init, repr=False)


def _declare(cls: C, *, repr: bool) -> C:
    dataclass(kw_only=True, eq=False, repr=repr)(cls)  # decorates cls in place (no slots)
    declared_here = {
        f.name: list(f.metadata["constraints"])
        for f in fields(cls)
        if f.init and "constraints" in f.metadata
    }
    plain = [f.name for f in fields(cls) if f.init and "constraints" not in f.metadata]
    if plain:
        raise InvalidParameterError(
            f"{cls.__name__} declares {plain[0]!r} without help or constraints; declare it "
            "with hyperparameter(default, help=..., constraints=[...]), or annotate it "
            "ClassVar if it is not a hyperparameter."
        )
    # Constraints a class body still writes by hand (a parameter without a field) are kept.
    own = cls.__dict__.get("_parameter_constraints", {})
    setattr(cls, "_parameter_constraints", {**declared_here, **own})  # noqa: B010 (any class)
    return cls


@dataclass_transform(
    kw_only_default=True, eq_default=False, field_specifiers=(hyperparameter, fixed, field)
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
    return _declare(cls, repr=True)


def _hand_written_init(cls: type, stop: type) -> bool:
    """Whether ``cls`` or a base below ``stop`` writes its own ``__init__`` (the old way:
    a keyword-only constructor plus a hand-written ``_parameter_constraints``)."""
    mro = cls.__mro__
    return any(
        "__init__" in b.__dict__ and "__dataclass_fields__" not in b.__dict__
        for b in mro[: mro.index(stop)]
    )


@dataclass_transform(
    kw_only_default=True, eq_default=False, field_specifiers=(hyperparameter, fixed, field)
)
class Declared:
    """Base of the classes whose hyperparameters are declared as fields (every method and
    training strategy): each subclass is made :func:`declared` when it is defined.

    A subclass that writes its own keyword-only ``__init__`` and ``_parameter_constraints``
    (the way before fields) is left as it is.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not _hand_written_init(cls, Declared):
            _declare(cls, repr=False)
            if "__repr__" not in cls.__dict__:  # not a declared mixin's (CertifiedParams)
                setattr(cls, "__repr__", Declared.__repr__)  # noqa: B010 (mypy: no method-assign)

    def get_params(self) -> dict[str, Any]:
        return get_params(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in get_params(self).items())
        return f"{type(self).__name__}({args})"


def get_params(obj: object) -> dict[str, Any]:
    """The keyword-only constructor parameters of ``obj`` and their current values."""
    sig = inspect.signature(type(obj).__init__)
    return {
        name: getattr(obj, name)
        for name, p in sig.parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def set_params(obj: Any, params: Mapping[str, Any], owner: str) -> None:
    """Set keyword-only constructor parameters on ``obj``; an unknown name raises clearly."""
    known = get_params(obj)
    for key, value in params.items():
        if key not in known:
            raise InvalidParameterError(
                f"{owner} has no parameter {key!r}; its parameters are: "
                f"{', '.join(known) or '(none)'}."
            )
        setattr(obj, key, value)


def parameters(cls: type) -> list[dict[str, Any]]:
    """Each hyperparameter of ``cls`` as declared: ``name``, ``default``, ``allowed`` (the
    constraints in the validator's words) and ``help``, in constructor order.

    What ``unbake methods`` and the docs' methods table print. A class that writes its own
    constructor has no help text (``""``).

    >>> @declared
    ... class Knobs:
    ...     lr: float = hyperparameter(0.1, help="step size", constraints=[Interval(float, 0, None)])
    >>> parameters(Knobs)
    [{'name': 'lr', 'default': 0.1, 'allowed': 'a float in [0, inf)', 'help': 'step size'}]
    """
    helps = {f.name: f.metadata.get("help", "") for f in fields(cls)} if _is_dataclass(cls) else {}
    out = []
    declared_constraints: dict[str, list[Any]] = getattr(cls, "_parameter_constraints", {})
    for name, p in inspect.signature(cls).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        constraints = declared_constraints.get(name, [])
        out.append(
            {
                "name": name,
                "default": None if p.default is inspect.Parameter.empty else p.default,
                "allowed": allowed(constraints) if constraints else "",
                "help": helps.get(name, ""),
            }
        )
    return out


def _is_dataclass(cls: type) -> bool:
    return hasattr(cls, "__dataclass_fields__")
