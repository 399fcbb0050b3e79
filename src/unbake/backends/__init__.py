"""Where independent training jobs run: in this process, in a process pool, or on Ray.

SISA (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021) trains its shard models in
isolation, so they can run anywhere. A backend maps a picklable, top-level function over
a list of jobs and returns the results in job order. Each job fixes its own thread count
and seeds, so every backend returns bitwise the same results.

>>> from unbake.backends import BACKENDS, create_backend
>>> BACKENDS.available()
['local', 'ray']
>>> create_backend("local").map(abs, [-1, 2, -3])
[1, 2, 3]

Joining a Ray cluster ships shards to it and reads back what it returns, so unbake joins
only the clusters the operator listed in ``UNBAKE_RAY_ADDRESSES`` (comma-separated), in
the process that trains or applies deletions. The same check covers an address given
on the command line, in a REST request's parameters, in a queued row of the catalog or
in a stored model; without an address the ray backend starts a private local Ray.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from unbake._validation import Hyperparameter, Interval, Options, validate_params
from unbake.exceptions import InvalidParameterError
from unbake.registry import Registry

__all__ = [
    "BACKEND",
    "BACKENDS",
    "RAY_ADDRESS",
    "RAY_ENV",
    "WORKERS",
    "Backend",
    "BackendName",
    "RayAddress",
    "allowed_ray_addresses",
    "backend_constraints",
    "create_backend",
]

#: Environment variable listing the Ray clusters unbake may join (comma-separated).
RAY_ENV = "UNBAKE_RAY_ADDRESSES"
#: ``auto``, ``host:port`` or ``ray://host:port`` (a bracketed IPv6 host is fine).
_RAY_FORM = re.compile(
    r"auto|(?:ray://)?(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r":(?P<port>[1-9][0-9]{0,4})"
)

J = TypeVar("J")
R = TypeVar("R")


def backend_constraints() -> dict[str, list]:
    """Constraints of the execution options, for everything that accepts them."""
    return {
        "backend": list(BACKEND.constraints),
        "workers": list(WORKERS.constraints),
        "ray_address": list(RAY_ADDRESS.constraints),
    }


def allowed_ray_addresses() -> set[str]:
    """The Ray addresses the operator allowed in ``UNBAKE_RAY_ADDRESSES``."""
    return {a.strip() for a in os.environ.get(RAY_ENV, "").split(",") if a.strip()}


class RayAddress:
    """A constraint: a Ray address of a sane form that the operator allowed (:data:`RAY_ENV`).

    >>> RayAddress().is_satisfied_by("10.0.0.5:6379")  # not allowed in this process
    False
    """

    def is_satisfied_by(self, value: object) -> bool:
        if not isinstance(value, str) or value not in allowed_ray_addresses():
            return False
        match = _RAY_FORM.fullmatch(value)
        return match is not None and int(match["port"] or 1) <= 65535

    def __str__(self) -> str:
        return (
            f"a Ray address (auto, host:port or ray://host:port) listed in {RAY_ENV} by the "
            f"operator (to join a cluster you trust, set {RAY_ENV}=ADDRESS)"
        )


class BackendName:
    """A constraint: the name of a registered backend (read when checked, so a backend
    registered later counts).

    >>> str(BackendName())
    "one of {'local', 'ray'}"
    """

    def is_satisfied_by(self, value: object) -> bool:
        return Options(BACKENDS.available()).is_satisfied_by(value)

    def __str__(self) -> str:
        return str(Options(BACKENDS.available()))


#: The execution options of everything that trains shards (``sisa``, ``sisa_lora``), as
#: hyperparameters. They change the wall time, never the weights.
BACKEND = Hyperparameter(
    "Where shards train: in this process, or on Ray (never changes the weights).",
    [BackendName()],
)
WORKERS = Hyperparameter("Shards trained at once.", [Interval(int, 1, None, closed="left")])
RAY_ADDRESS = Hyperparameter(
    f"The Ray cluster to join, one listed in {RAY_ENV} (None: a private local Ray).",
    [RayAddress(), None],
)


class Backend:
    """Runs ``fn`` over ``jobs`` and returns the results in order."""

    name: ClassVar[str]

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        raise NotImplementedError


BACKENDS: Registry[Backend] = Registry("backend")


def create_backend(
    name: str = "local", *, workers: int = 1, ray_address: str | None = None
) -> Backend:
    """The backend ``name`` with ``workers`` parallel jobs (Ray also takes an address)."""
    if ray_address is not None and name != "ray":
        raise InvalidParameterError(
            f"ray_address={ray_address!r} only applies to the ray backend, not {name!r}; "
            "add --backend ray or drop --ray-address."
        )
    validate_params(
        {"backend": name, "workers": workers, "ray_address": ray_address},
        backend_constraints(),
        "the shard backend",
    )
    params: dict[str, Any] = {"workers": workers}
    if name == "ray":
        params["address"] = ray_address
    return BACKENDS.create(name, **params)


from unbake.backends import local as _local  # noqa: E402,F401  (registers the backends)
from unbake.backends import ray as _ray  # noqa: E402,F401
