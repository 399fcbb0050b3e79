"""The ``local`` backend: jobs run one after another here, or in a pool of processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from unbake.backends import BACKENDS, Backend

__all__ = ["LocalBackend"]

J = TypeVar("J")
R = TypeVar("R")


@BACKENDS.register("local")
class LocalBackend(Backend):
    """Sequential with ``workers=1``; otherwise a pool of ``workers`` fresh processes.

    The pool uses the ``spawn`` start method, so no thread pool or lock of this process
    is inherited by a forked child (torch's OpenMP pool does not survive ``fork``). A
    script that trains with ``workers > 1`` therefore needs the usual
    ``if __name__ == "__main__":`` guard. The children inherit this process's
    environment, so they start torch with the same thread policy
    (:mod:`unbake._threads`).
    """

    name = "local"

    def __init__(self, *, workers: int = 1) -> None:
        self.workers = workers

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        jobs = list(jobs)
        if self.workers <= 1 or len(jobs) <= 1:
            return [fn(job) for job in jobs]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(jobs)), mp_context=context
        ) as pool:
            return list(pool.map(fn, jobs))
