"""The ``ray`` backend: every job is one Ray task (``pip install 'unbake[ray]'``).

Ray is imported only when this backend runs. Without an address it starts a small local
Ray (``workers`` CPUs, no dashboard, worker logs kept out of the driver) and shuts it
down afterwards; with ``address`` it joins that cluster and leaves it running. If Ray is
already initialised in this process, that session is used as it is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from unbake._threads import policy_env
from unbake.backends import BACKENDS, Backend
from unbake.exceptions import UnbakeError

__all__ = ["RayBackend", "import_ray", "ray_session"]

J = TypeVar("J")
R = TypeVar("R")


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UnbakeError(
            "The ray backend needs Ray, which is not installed; install it with "
            "`pip install 'unbake[ray]'` or use --backend local."
        ) from None
    return ray


@BACKENDS.register("ray")
class RayBackend(Backend):
    """One Ray task (one CPU) per job on a local Ray, or on the cluster at ``address``."""

    name = "ray"

    def __init__(self, *, workers: int = 1, address: str | None = None) -> None:
        self.workers = workers
        self.address = address

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        jobs = list(jobs)
        if not jobs:
            return []
        with ray_session(workers=self.workers, address=self.address) as ray:
            task = ray.remote(num_cpus=1, max_retries=0)(fn)
            return list(ray.get([task.remote(job) for job in jobs]))


@contextlib.contextmanager
def ray_session(*, workers: int = 1, address: str | None = None) -> Iterator[Any]:
    """Ray, initialised for the ``with`` block: an existing session is used as it is;
    otherwise a local Ray of ``workers`` CPUs is started (or ``address`` joined) and shut
    down (left) at the end."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # A local cluster needs no token; an explicit setting in the environment wins.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        # Workers start torch with this process's thread policy (passive OpenMP waits).
        "runtime_env": {"env_vars": policy_env()},
    }
    if address is None:
        options["num_cpus"] = workers
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UnbakeError(
            f"Cannot start or join {address or 'a local Ray'} ({str(exc).splitlines()[0]}); "
            "check --ray-address or use --backend local."
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()
