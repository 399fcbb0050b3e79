"""A workspace's files by content, to check that an operation changed nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["workspace_snapshot"]


def workspace_snapshot(root: str | Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``, except names in ``skip``
    and the catalog's ``-shm`` file (SQLite's shared-memory index of the WAL, which
    readers update; it holds no data)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm") and p.name not in skip
    }
