"""Rich progress bars for long loops, switched on by the CLI when stderr is a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar

_ENABLED: ContextVar[bool] = ContextVar("unbake_progress", default=False)

__all__ = ["enable_progress", "progress"]


def enable_progress(on: bool | None = None) -> None:
    """Turn progress bars on (``None``: on when stderr is a terminal)."""
    _ENABLED.set(sys.stderr.isatty() if on is None else on)


class _Bar:
    def __init__(self, bar, task) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[_Bar]:
    """A progress bar over ``total`` steps; a no-op unless enabled."""
    if not _ENABLED.get() or total <= 1:
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        yield _Bar(bar, bar.add_task(description, total=total))
