"""The ``local`` backend: jobs run one after another here, or in a pool of processes."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from unbake.backends import BACKENDS, Backend

__all__ = ["LocalBackend"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Pool initializer: this worker ends when the process that started it dies.

    Without it, a parent killed with SIGKILL leaves its workers (and, through the pipe
    they hold, the multiprocessing resource tracker) running forever. On Linux the
    kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere a
    daemon thread watches the parent's PID. Either way, a parent already gone by the
    time this runs is caught by the PID check.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int, interval: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


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
            max_workers=min(self.workers, len(jobs)),
            mp_context=context,
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            return list(pool.map(fn, jobs))
