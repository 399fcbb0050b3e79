"""A speed claim, so slow-only (the whole file): training beside a busy process.

On a loaded machine it fails; ``unbake bench threads`` measures the same thing in JSON.
"""

from __future__ import annotations

import pytest

from unbake.bench.threads import busy_siblings, train_once

pytestmark = pytest.mark.slow


def test_training_beside_a_busy_process_is_at_most_twice_as_slow():
    """The regression test of issue 11: a spinning sibling must not slow training 100×.

    Each run trains the digits MLP in a fresh process (OpenMP reads its wait policy when
    torch loads), once on an idle machine and once beside a process spinning a Python
    loop; the best of two runs each.
    """
    idle = min(train_once("digits", 8)["seconds"] for _ in range(2))
    with busy_siblings(1):
        busy = min(train_once("digits", 8)["seconds"] for _ in range(2))
    assert busy <= 2 * idle, f"training took {busy:.2f}s beside a busy process, {idle:.2f}s idle"
