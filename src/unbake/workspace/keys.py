"""A workspace's secrets: the HMAC key that hides subject IDs, and its Ed25519 signing key.

Both are files of the workspace folder with mode 0600, written atomically. Subject and
sample IDs are never stored in a request, ledger entry or certificate in the clear; they
appear as ``HMAC-SHA256(secret, "subject:" + ID)`` (or ``"sample:" + ID``), so that the
operator (who holds the secret) can recompute them and nobody else can reverse them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from unbake.exceptions import IntegrityError, WorkspaceError
from unbake.workspace.atomic import PRIVATE, atomic_write_bytes

__all__ = ["SECRET", "SIGNING_KEY", "create_secret", "keyed_hash", "load_secret"]

SECRET = "secret.key"
SIGNING_KEY = "signing.key"
_SECRET_BYTES = 32


def create_secret(root: Path) -> bytes:
    """Write a new random 32-byte secret (mode 0600); returns it."""
    secret = os.urandom(_SECRET_BYTES)
    atomic_write_bytes(root / SECRET, secret, mode=PRIVATE)
    return secret


def load_secret(root: Path) -> bytes:
    path = root / SECRET
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        raise WorkspaceError(
            f"The workspace secret {path} is missing; restore it from a backup (without it "
            "the subject hashes of past requests cannot be checked)."
        ) from None
    if len(secret) != _SECRET_BYTES:
        raise IntegrityError(
            f"The workspace secret {path} has {len(secret)} bytes instead of {_SECRET_BYTES}; "
            "restore it from a backup."
        )
    return secret


def keyed_hash(secret: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of ``"<kind>:<value>"`` under the workspace secret, as hex."""
    return hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
