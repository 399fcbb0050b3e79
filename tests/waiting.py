"""Waiting for a condition in a test, without a speed claim.

A test that waits for another thread or process polls for the condition itself; the
deadline only stops a hung test, so it is far longer than the wait ever takes on a loaded
machine, and a test that runs into it fails saying what hung.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds after which a wait counts as hung: minutes, where the wait takes seconds.
HUNG_AFTER = 300.0


def wait_until(
    ready: Callable[[], object],
    what: str | Callable[[], str],
    *,
    timeout: float = HUNG_AFTER,
    poll: float = 0.05,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``ready()`` until it is true; fail with "hung" and ``what`` after ``timeout``.

    ``what`` may be a function, called only on failure (to name, say, what is still left).
    ``check`` (if given) runs before each poll and fails the test at once when what is
    waited on can no longer happen (a server process that exited, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if ready():
            return
        if time.monotonic() >= deadline:
            named = what() if callable(what) else what
            raise AssertionError(f"hung: {named} did not happen in {timeout:.0f} s")
        time.sleep(poll)
