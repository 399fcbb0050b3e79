"""Results cached on disk between sessions, each under a hash of what produced it.

A long benchmark is cut into *cells* (one forget request and seed); each finished cell
is written atomically as JSON under a name that holds the hash of its configuration, so
a rerun with the same configuration reads it back instead of recomputing it, and any
change to the configuration (data, model, training, methods and their parameters, seed)
gives another hash and so a fresh computation. The configuration includes a hash of
the source that computes a cell's numbers (:func:`code_fingerprint`: data, models,
training, methods, families, backends, evaluation, the shared low-level modules and the
cached benchmarks themselves): the cache cannot tell which of those changes matter, so
after any such change every cell is computed afresh, while a change to the CLI, the
service, the workspace or the reports leaves the cells valid. Models are cached as
hash-checked safetensors checkpoints (never pickles). Each entry keeps its date and
machine, and the benchmarks say which cells they read back.

>>> key_hash({"seed": 0, "model": "cnn"}) == key_hash({"model": "cnn", "seed": 0})
True
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from unbake import _json as strict_json
from unbake.bench import code_info, machine_info
from unbake.data import Samples
from unbake.training import TrainedModel
from unbake.workspace.atomic import atomic_write_bytes, atomic_write_text, sha256_bytes
from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint

__all__ = [
    "FORMAT",
    "cell_path",
    "code_fingerprint",
    "data_fingerprint",
    "fingerprinted_files",
    "key_hash",
    "load_model",
    "read_cell",
    "save_model",
    "write_cell",
]

#: Bumped when what a cell holds changes meaning, so old cells are never read as new.
FORMAT = "unbake-bench-cell/1"


#: The parts of the ``unbake`` package that compute a cached cell's numbers.
COMPUTING = (
    "data",
    "models",
    "training",
    "methods",
    "families",
    "backends",
    "evaluation",
    "_threads.py",
    "_validation.py",
    "_json.py",
    "registry.py",
    "exceptions.py",
    "workspace/checkpoints.py",
    "bench/__init__.py",
    "bench/cache.py",
    "bench/approximate.py",
    "bench/tune.py",
)


def fingerprinted_files() -> list[str]:
    """The package-relative paths of the Python files :func:`code_fingerprint` reads."""
    root = Path(__file__).resolve().parents[1]
    files: set[Path] = set()
    for part in COMPUTING:
        path = root / part
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    return sorted(str(f.relative_to(root)) for f in files)


@functools.cache
def code_fingerprint() -> str:
    """sha256 over the path and bytes of every Python file in :data:`COMPUTING`."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for rel in fingerprinted_files():
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return digest.hexdigest()


def key_hash(key: dict[str, Any]) -> str:
    """sha256 of ``key`` as canonical JSON (sorted keys; non-JSON values as strings),
    with the cell format and :func:`code_fingerprint`."""
    full = {"format": FORMAT, "code": code_fingerprint(), **key}
    text = json.dumps(full, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def data_fingerprint(samples: Samples) -> str:
    """sha256 over the features, labels and IDs of ``samples`` (what training reads)."""
    digest = hashlib.sha256()
    for array in (samples.X, samples.y, samples.ids.astype(str)):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def cell_path(directory: str | os.PathLike, name: str, key: dict[str, Any]) -> Path:
    """Where the cell ``name`` with configuration ``key`` lives: ``<name>-<hash16>.json``."""
    return Path(directory) / f"{name}-{key_hash(key)[:16]}.json"


def read_cell(path: str | os.PathLike, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached result at ``path`` if it was written for ``key``; else ``None``.

    A file that cannot be read, or that holds another key (a truncated hash collision, a
    hand edit), is treated as absent and will be overwritten by a fresh computation.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("hash") != key_hash(key):
        return None
    return data


def write_cell(path: str | os.PathLike, key: dict[str, Any], result: dict[str, Any]) -> None:
    """Write ``result`` for ``key`` at ``path``, atomically, with when and where."""
    entry = {
        "format": FORMAT,
        "hash": key_hash(key),
        "key": key,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "code": code_info(),
        **result,
    }
    atomic_write_text(path, strict_json.dumps(entry, indent=2) + "\n")


def save_model(path: str | os.PathLike, model: TrainedModel) -> str:
    """Write ``model`` as a checkpoint at ``path``, atomically; returns its sha256."""
    data = encode_checkpoint(model, model_id=Path(path).stem, parent_id=None)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_model(path: str | os.PathLike, sha256: str) -> TrainedModel | None:
    """The checkpoint at ``path`` if its bytes hash to ``sha256``; else ``None``."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if sha256_bytes(data) != sha256:
        return None
    model, _ = decode_checkpoint(data, expected_sha256=sha256, source=f"Cached model {path}")
    return model
