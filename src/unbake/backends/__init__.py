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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from unbake._validation import Interval, Options, validate_params
from unbake.exceptions import InvalidParameterError
from unbake.registry import Registry

__all__ = ["BACKENDS", "Backend", "backend_constraints", "create_backend"]

J = TypeVar("J")
R = TypeVar("R")


def backend_constraints() -> dict[str, list]:
    """Constraints of the execution options, for everything that accepts them."""
    return {
        "backend": [Options(BACKENDS.available())],
        "workers": [Interval(int, 1, None, closed="left")],
        "ray_address": [str, None],
    }


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
    validate_params(
        {"backend": name, "workers": workers, "ray_address": ray_address},
        backend_constraints(),
        "the shard backend",
    )
    params: dict[str, Any] = {"workers": workers}
    if name == "ray":
        params["address"] = ray_address
    elif ray_address is not None:
        raise InvalidParameterError(
            f"ray_address={ray_address!r} only applies to the ray backend, not {name!r}; "
            "add --backend ray or drop --ray-address."
        )
    return BACKENDS.create(name, **params)


from unbake.backends import local as _local  # noqa: E402,F401  (registers the backends)
from unbake.backends import ray as _ray  # noqa: E402,F401
