"""Peak resident memory of a block of work, for the benchmarks' memory figures.

Linux keeps a process's high-water resident set size (``VmHWM`` in
``/proc/self/status``) and lets the process reset it (writing ``5`` to
``/proc/self/clear_refs``), so :func:`peak_rss` can measure the peak of one block: a
detector, a method, a whole benchmark. Blocks nest: an inner block's reset would erase
the peak an outer block has seen so far, so each reset first hands the current
high-water mark to every enclosing block. The figure is the whole process's resident
memory at its peak (the data and models already loaded count), not what the block
allocated; worker processes (a process pool, Ray) are not included. Resetting also
lowers what ``getrusage`` and ``/usr/bin/time`` report for the process afterwards (they
read the same mark): read the benchmark's own figure instead.

Where the high-water mark cannot be reset (not Linux), the figure is the process's peak
so far (``resource.getrusage``), and ``scope`` says ``"process"`` instead of ``"block"``.

>>> with peak_rss() as peak:
...     block = bytearray(1 << 20)
>>> peak.mib is not None and peak.mib > 0
True
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Peak", "peak_rss"]

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass
class Peak:
    """The peak resident memory seen over a block, in MiB (``None`` while it runs)."""

    mib: float | None = None
    #: ``"block"`` when the high-water mark was reset at the block's start, else
    #: ``"process"`` (the process's peak since it started).
    scope: str = "block"
    _seen_kib: int = 0

    def to_dict(self) -> dict[str, float | str | None]:
        return {"peak_rss_mib": self.mib, "scope": self.scope}


_open: list[Peak] = []


def _high_water_kib() -> int | None:
    try:
        with open(_STATUS) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _process_peak_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def _reset() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return _high_water_kib() is not None
    except OSError:
        return False


def _hand_up(kib: int) -> None:
    for outer in _open:
        outer._seen_kib = max(outer._seen_kib, kib)


@contextmanager
def peak_rss() -> Iterator[Peak]:
    """Measure the peak resident memory of the ``with`` block (see the module)."""
    _hand_up(_high_water_kib() or 0)
    peak = Peak(scope="block" if _reset() else "process")
    _open.append(peak)
    try:
        yield peak
    finally:
        _open.pop()
        now = _high_water_kib() if peak.scope == "block" else _process_peak_kib()
        kib = max(peak._seen_kib, now or 0)
        peak.mib = round(kib / 1024, 1)
        _hand_up(kib)
