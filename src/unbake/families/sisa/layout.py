"""Where each sample goes in a SISA model: its shard and its slice, by keyed hashes.

A sample's shard and slice come from a keyed hash of its subject (``assignment=
"subject"``; samples without a subject use their ID) or of its ID (``"hash"``), so
removing samples never moves the others. The hashes are vectorised FNV-1a and
splitmix64, salted with the model seed: stable across processes, machines and versions.
Every shard's initialisation seed and every slice step's batch-order seed derive from the
model seed the same way. Pure functions of IDs and seeds, with no model state.

>>> import numpy as np
>>> from unbake.data import Samples
>>> ids = np.array(["a", "b", "c", "d"])
>>> samples = Samples(np.zeros((4, 2), np.float32), np.zeros(4, np.int64), ids, np.full(4, ""))
>>> layout = ShardLayout.of(samples, shards=2, slices=1, assignment="hash", seed=0)
>>> int(layout.sizes().sum())
4
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from unbake.data import Samples

__all__ = [
    "ShardLayout",
    "fnv1a",
    "key_hashes",
    "keyed",
    "sample_keys",
    "shard_seed",
    "step_seed",
]


def _digest(seed: int, purpose: str, key: str) -> int:
    """A 64-bit keyed hash of one string: stable across processes, machines and versions."""
    data = f"{int(seed)}\x1f{purpose}\x1f{key}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


_FNV_PRIME = np.uint64(0x100000001B3)


def _mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps modulo 2**64)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


#: Rows hashed at a time: the byte matrix of a chunk, not of every key, is in memory.
_CHUNK = 1 << 16


def fnv1a(keys: np.ndarray) -> np.ndarray:
    """The 64-bit FNV-1a hash of the UTF-8 bytes of every string in ``keys``, vectorised
    (a chunk of keys at a time)."""
    if len(keys) > _CHUNK:
        return np.concatenate([fnv1a(keys[i : i + _CHUNK]) for i in range(0, len(keys), _CHUNK)])
    raw = np.char.encode(np.asarray(keys, dtype=str), "utf-8")
    lengths = np.char.str_len(raw)
    codes = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(len(raw), raw.dtype.itemsize)
    h = np.full(len(raw), 0xCBF29CE484222325, dtype=np.uint64)
    for j in range(codes.shape[1]):
        # only a string's own bytes count, not the padding up to the longest string
        h = np.where(j < lengths, (h ^ codes[:, j]) * _FNV_PRIME, h)
    return h


def keyed(base: np.ndarray, seed: int, purpose: str) -> np.ndarray:
    """Salt hashes from :func:`fnv1a` with ``(seed, purpose)`` and mix them (splitmix64)."""
    return _mix(base ^ np.uint64(_digest(seed, purpose, "")))


def shard_seed(seed: int, shard: int) -> int:
    """The initialisation seed of shard ``shard``."""
    return _digest(seed, "init", str(shard)) % 2**31


def step_seed(seed: int, shard: int, step: int) -> int:
    """The batch-order seed of slice step ``step`` of shard ``shard``."""
    return _digest(seed, "step", f"{shard}:{step}") % 2**31


@dataclass(frozen=True)
class ShardLayout:
    """Which shard and slice each sample of one :class:`Samples` belongs to."""

    ids: np.ndarray
    shard: np.ndarray
    slice: np.ndarray
    shards: int
    slices: int

    @classmethod
    def of(
        cls, samples: Samples, *, shards: int, slices: int, assignment: str, seed: int
    ) -> ShardLayout:
        base = key_hashes(samples, assignment)
        return cls(
            samples.ids.astype(str),
            (keyed(base, seed, "shard") % np.uint64(shards)).astype(np.int64),
            (keyed(base, seed, "slice") % np.uint64(slices)).astype(np.int64),
            shards,
            slices,
        )

    def rows(self, shard: int) -> tuple[np.ndarray, list[int]]:
        """Row indices of ``shard`` ordered by (slice, ID), and each slice's end offset."""
        rows = np.flatnonzero(self.shard == shard)
        by_id = rows[np.argsort(self.ids[rows], kind="stable")]
        ordered = by_id[np.argsort(self.slice[by_id], kind="stable")]
        counts = np.bincount(self.slice[ordered], minlength=self.slices)
        return ordered, np.cumsum(counts).tolist()

    def sizes(self) -> np.ndarray:
        """Sample counts, shape ``(shards, slices)``."""
        out = np.zeros((self.shards, self.slices), dtype=np.int64)
        np.add.at(out, (self.shard, self.slice), 1)
        return out

    def fingerprints(self) -> list[list[str]]:
        """A multiset hash of the sample IDs of every (shard, slice): what each was fed.

        The sum modulo 2**64 of a hash of each ID, so it needs no sorting and the same
        IDs in any order give the same fingerprint.
        """
        sums = np.zeros(self.shards * self.slices, dtype=np.uint64)
        np.add.at(sums, self.shard * self.slices + self.slice, keyed(fnv1a(self.ids), 0, "id"))
        rows = sums.reshape(self.shards, self.slices)
        return [[f"{int(v):016x}" for v in row] for row in rows]


def sample_keys(samples: Samples, assignment: str) -> np.ndarray:
    """What decides a sample's shard: its subject (or, lacking one, its ID), or its ID."""
    return _keys(samples.ids, samples.subjects, assignment)


def _keys(ids: np.ndarray, subjects: np.ndarray, assignment: str) -> np.ndarray:
    ids = ids.astype(str)
    if assignment == "hash":
        return np.char.add("sample:", ids)
    subjects = subjects.astype(str)
    return np.where(subjects != "", np.char.add("subject:", subjects), np.char.add("sample:", ids))


def key_hashes(samples: Samples, assignment: str) -> np.ndarray:
    """``fnv1a(sample_keys(samples, assignment))``, built a chunk of rows at a time, so
    that a large data set never holds every key string at once."""
    parts = [
        fnv1a(_keys(samples.ids[i : i + _CHUNK], samples.subjects[i : i + _CHUNK], assignment))
        for i in range(0, len(samples), _CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
