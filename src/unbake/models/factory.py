"""The model factory protocol: what unbake calls to build a freshly initialised model.

A **factory** is any callable (a function or an ``nn.Module`` class) that unbake calls as

.. code-block:: python

    torch.manual_seed(seed)  # inside torch.random.fork_rng: the caller's RNG is untouched
    module = factory(input_shape=input_shape, n_classes=n_classes, **model_params)

``input_shape`` is one sample's shape (``(1, 8, 8)`` for the digits, ``(n_features,)``
for a table), ``n_classes`` the number of labels, and ``model_params`` the keyword
arguments given with the model (``ModelSpec(name, params)``, ``--model-param key=value``).
It must return a ``torch.nn.Module`` whose initial weights come from torch's CPU random
number generator only, so that one seed always gives the same weights: that is what
makes a retrain reproducible, and :func:`check_seeded` refuses a factory that builds two
different modules from one seed. The same seeded call starts every training run and
every retrain; nothing else about the factory is assumed.

This module holds the protocol's checks (:func:`check_signature`, :func:`construct`,
:func:`check_seeded`); :func:`unbake.models.build_model` is the seeded call above.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unbake.exceptions import InvalidParameterError

__all__ = ["PROTOCOL", "check_seeded", "check_signature", "construct"]

#: The factory protocol in one line, quoted by every error about a factory.
PROTOCOL = (
    "factory(*, input_shape: tuple[int, ...], n_classes: int, **model_params) -> "
    "torch.nn.Module, called with torch's CPU RNG seeded"
)

_REQUIRED = ("input_shape", "n_classes")
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def check_signature(name: str, factory: Callable[..., Any], params: Mapping[str, Any]) -> None:
    """Refuse a factory that cannot be called as the protocol says with ``params``.

    Checked from the signature alone, without building anything: the factory must take
    ``input_shape`` and ``n_classes`` by keyword, every key of ``params``, and every
    other argument it has no default for.
    """
    if not callable(factory):
        raise InvalidParameterError(
            f"Model factory {name!r} is a {type(factory).__name__}, not a callable; a "
            f"factory is {PROTOCOL}."
        )
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: try the call
        return
    ps = sig.parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())
    for arg in _REQUIRED:
        if (arg in ps and ps[arg].kind not in _KEYWORD) or (arg not in ps and not var_kw):
            raise InvalidParameterError(
                f"Model factory {name!r} does not take {arg!r} by keyword; a factory is "
                f"{PROTOCOL}: add {arg} to its signature."
            )
    own = [k for k, p in ps.items() if p.kind in _KEYWORD and k not in _REQUIRED]
    unknown = [k for k in params if k not in own and not var_kw]
    if unknown:
        raise InvalidParameterError(
            f"Model {name!r} has no parameter {unknown[0]!r}; its parameters are: "
            f"{', '.join(own) or '(none)'} (give them as --model-param key=value)."
        )
    missing = [
        k
        for k, p in ps.items()
        if k in own and p.default is inspect.Parameter.empty and k not in params
    ]
    if missing:
        raise InvalidParameterError(
            f"Model {name!r} needs the parameter {missing[0]!r}; give it as "
            f"--model-param {missing[0]}=VALUE (ModelSpec({name!r}, {{{missing[0]!r}: ...}}))."
        )


def construct(
    name: str,
    factory: Callable[..., Any],
    params: Mapping[str, Any],
    *,
    input_shape: Sequence[int],
    n_classes: int,
) -> nn.Module:
    """Call ``factory`` as the protocol says, without seeding (the caller seeds).

    A factory that rejects its arguments or returns something other than an
    ``nn.Module`` is refused with one line that quotes the protocol.
    """
    check_signature(name, factory, params)
    try:
        model = factory(input_shape=tuple(input_shape), n_classes=n_classes, **params)
    except TypeError as exc:
        raise InvalidParameterError(
            f"Model factory {name!r} rejected its arguments ({exc}); a factory is {PROTOCOL}."
        ) from None
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(
            f"Model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
            f"a factory is {PROTOCOL}."
        )
    return model


def first_difference(a: nn.Module, b: nn.Module) -> str | None:
    """The name of the first tensor (parameter or buffer) ``a`` and ``b`` do not share
    bit for bit, or ``None`` when they are equal."""
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        return next((k for k in (*sa, *sb) if k not in sa or k not in sb), "(tensor order)")
    return next((k for k in sa if not torch.equal(sa[k], sb[k])), None)


def check_seeded(build: Callable[[], nn.Module], name: str, seed: int) -> nn.Module:
    """Build twice with one seed (``build()`` seeds and constructs) and refuse a factory
    whose two modules differ; returns the first module."""
    first, second = build(), build()
    if first is second:
        raise InvalidParameterError(
            f"Model factory {name!r} returned the same module object twice, so a retrain "
            f"would start from weights already trained; build a new module in each call "
            f"(a factory is {PROTOCOL})."
        )
    differs = first_difference(first, second)
    if differs is not None:
        raise InvalidParameterError(
            f"Model factory {name!r} built two different modules from seed {seed} (tensor "
            f"{differs!r} differs), so no retrain could reproduce it; draw every initial "
            f"weight from torch's RNG, which unbake seeds (a factory is {PROTOCOL})."
        )
    return first
