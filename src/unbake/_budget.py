"""A wall-clock budget that long loops honour: stop work that can no longer count.

``with time_budget(seconds):`` sets a deadline for the block, in the calling thread's
context; every loop that can run for long (the phases of training and gradient
unlearning, per-sample Fisher chunks, Hessian-vector products, summed gradients) calls
:func:`check_time_budget` once per step and raises :class:`TimeBudgetExceeded` once the
deadline has passed. ``unbake tune`` uses it to stop a trial at the point where it would
be pruned anyway, instead of running it to the end. Outside such a block the check is a
context-variable read and does nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

from unbake.exceptions import UnbakeError

__all__ = ["TimeBudgetExceeded", "check_time_budget", "time_budget"]

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("unbake_deadline", default=None)


class TimeBudgetExceeded(UnbakeError):
    """Work inside :func:`time_budget` ran past its deadline and was stopped."""

    def __init__(self, budget_s: float, elapsed_s: float) -> None:
        super().__init__(
            f"Stopped after {elapsed_s:.1f} s: over the time budget of {budget_s:.1f} s; "
            "raise the budget to let this run finish."
        )
        self.budget_s = budget_s
        self.elapsed_s = elapsed_s


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Within the block, loops stop (raising :class:`TimeBudgetExceeded`) after ``seconds``."""
    start = time.perf_counter()
    token = _DEADLINE.set((start, float(seconds)))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_time_budget() -> None:
    """Raise :class:`TimeBudgetExceeded` if the enclosing :func:`time_budget` has run out."""
    budget = _DEADLINE.get()
    if budget is None:
        return
    start, seconds = budget
    elapsed = time.perf_counter() - start
    if elapsed > seconds:
        raise TimeBudgetExceeded(seconds, elapsed)
