"""Train / validation / test membership by identity, not by position.

A sample's split is decided by a keyed hash (HMAC-SHA256, keyed by the split seed) of
its subject, or of its sample ID when it has no subject. So every row of one subject
lands on the same side, and adding or deleting rows never moves another sample.

>>> ids, people = ["a", "b", "c", "d", "e", "f"], ["p", "p", "q", "q", "r", "r"]
>>> assign_splits(ids, people, test_fraction=0.3, val_fraction=0.2, seed=0).tolist()
['train', 'train', 'test', 'test', 'train', 'train']
>>> assign_splits(ids[1:], people[1:], test_fraction=0.3, val_fraction=0.2, seed=0).tolist()
['train', 'test', 'test', 'train', 'train']
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unbake.exceptions import InvalidParameterError

__all__ = ["SPLITS", "SplitSpec", "assign_splits", "split_key"]

#: The split names, in the order the catalog and ``unbake samples`` list them.
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """Split fractions (of all rows) and the seed that keys the hash.

    ``test_fraction`` is ``None`` for a dataset with an official test set (Fashion-MNIST);
    then ``val_fraction`` is a fraction of its training set.
    """

    test_fraction: float | None = 0.2
    val_fraction: float = 0.1
    seed: int = 0

    @classmethod
    def parse(
        cls,
        test_fraction: float | str | None = 0.2,
        val_fraction: float | str = 0.1,
        seed: int | str = 0,
    ) -> SplitSpec:
        """Validate options as given by a loader (strings when reloaded from the catalog)."""
        test = None if test_fraction is None else _fraction("test_fraction", test_fraction)
        val = _fraction("val_fraction", val_fraction, allow_zero=True)
        if test is not None and (test == 0 or test + val >= 1):
            raise InvalidParameterError(
                f"The test fraction must be in (0, 1) and test + validation below 1. "
                f"Got test_fraction={test}, val_fraction={val} instead; lower them."
            )
        try:
            seed_int = int(seed)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"The split seed must be an integer. Got {seed!r} instead."
            ) from None
        return cls(test, val, seed_int)

    def to_options(self) -> dict[str, str]:
        """The loader options that rebuild this split (recorded in the dataset spec)."""
        out = {"val_fraction": str(self.val_fraction), "split_seed": str(self.seed)}
        if self.test_fraction is not None:
            out["test_fraction"] = str(self.test_fraction)
        return out


def _fraction(name: str, value: float | str, *, allow_zero: bool = False) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (0 <= out < 1) or (out == 0 and not allow_zero):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise InvalidParameterError(
            f"The '{name}' split option must be a float in {interval}. Got {value!r} instead."
        )
    return out


def split_key(ids: Sequence[str] | np.ndarray, subjects: Sequence[str] | np.ndarray) -> list[str]:
    """What the hash reads for each row: the subject if known, else the sample ID."""
    return [f"subject:{s}" if s else f"id:{i}" for i, s in zip(ids, subjects, strict=True)]


def _unit(keys: list[str], seed: int) -> np.ndarray:
    """A uniform draw in [0, 1) per key, from HMAC-SHA256 keyed by the seed."""
    secret = f"unbake-split-{seed}".encode()
    return np.array(
        [
            int.from_bytes(hmac.new(secret, k.encode(), hashlib.sha256).digest()[:8], "big")
            / 2.0**64
            for k in keys
        ]
    )


def assign_splits(
    ids: Sequence[str] | np.ndarray,
    subjects: Sequence[str] | np.ndarray,
    *,
    test_fraction: float | None,
    val_fraction: float,
    seed: int,
) -> np.ndarray:
    """The split name of each row (``"train"``, ``"val"`` or ``"test"``).

    With ``test_fraction=None`` no row goes to test (the caller holds an official one).
    The fractions are expected shares, not exact counts: each row is placed on its own.
    """
    u = _unit(split_key(ids, subjects), seed)
    test = 0.0 if test_fraction is None else test_fraction
    out = np.full(len(u), "train", dtype=object)
    out[u < test + val_fraction] = "val"
    out[u < test] = "test"
    return out
