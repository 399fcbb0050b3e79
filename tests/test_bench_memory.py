"""`unbake.bench.memory.peak_rss`: the peak resident memory of one block, nested blocks
included, so the benchmarks can say what each stage needs."""

import sys

import numpy as np
import pytest

from unbake.bench import memory
from unbake.bench.memory import peak_rss

MIB = 1 << 20
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def touch(mib: int) -> None:
    """Make ``mib`` MiB resident (written, not just reserved), then free them."""
    np.ones(mib * MIB, dtype=np.uint8)


@linux
def test_a_block_sees_its_own_peak_and_an_inner_block_keeps_the_outer_one():
    with peak_rss() as big:
        touch(160)
    with peak_rss() as small:
        touch(8)
    assert big.scope == small.scope == "block"
    # The second block is measured from its own start: the first one's 160 MiB is gone.
    assert big.mib - small.mib > 100
    with peak_rss() as outer:
        touch(160)
        with peak_rss() as inner:  # its reset must not erase what the outer block saw
            touch(8)
    assert outer.mib - inner.mib > 100 and outer.to_dict()["scope"] == "block"


def test_without_a_resettable_mark_it_reports_the_process_peak(monkeypatch):
    monkeypatch.setattr(memory, "_CLEAR_REFS", "/nonexistent/clear_refs")
    with peak_rss() as peak:
        touch(4)
    assert peak.scope == "process" and peak.mib > 0
