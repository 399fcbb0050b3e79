"""Atomic file writes and content hashing.

A workspace's own files (catalog, checkpoints, certificates, keys, reference bank) are
private to its owner: created with mode :data:`PRIVATE` (0600), in folders of mode
:data:`PRIVATE_DIR` (0700), whatever the umask allows others.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

__all__ = [
    "PRIVATE",
    "PRIVATE_DIR",
    "atomic_write_bytes",
    "atomic_write_text",
    "sha256_bytes",
    "sha256_file",
]

TMP_SUFFIX = ".unbake-tmp"
#: The mode of a workspace's files, and of its folders.
PRIVATE, PRIVATE_DIR = 0o600, 0o700


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename.

    ``mode`` (e.g. :data:`PRIVATE` for a workspace's files) is set before any byte is
    written, and a missing folder for a private file is made :data:`PRIVATE_DIR`; by
    default the file gets the mode a plain ``open()`` would give it.
    """
    path = Path(path)
    private = mode is not None and not mode & 0o077
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR if private else 0o777)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        # mkstemp makes 0600 files; give the result the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
