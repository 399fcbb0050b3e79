"""A request's personal data, kept so that it can be erased (crypto-shredding).

A deletion request carries two kinds of personal data: the free text of its ``reason``
("GDPR art. 17 request from someone@example.org") and the IDs of the samples it names
(where an ID column holds a person's name or e-mail). The hash-chained ledger must never
hold them, or erasing them would break the chain. So:

- each is stored only **sealed**: AES-256-GCM under a fresh random 256-bit key of its
  own per request and field, the key kept in the ``request_secrets`` table (never
  hashed into the ledger), the request ID and field bound in as associated data;
- the ledger holds only their **keyed hashes** (``reason_hmac``, ``ids_hmac``: HMAC-SHA256
  under the workspace secret, see :mod:`unbake.workspace.keys`), which still verify, and
  still let the operator check a claimed reason or ID list, after the key is gone;
- :meth:`unbake.workspace.Workspace.shred_due` destroys a key once its request is done
  and its retention has passed; what it sealed then reads as erased (``None``).

A sealed value is the JSON text ``{"nonce": B64, "sealed": "aes-256-gcm", "value": B64}``.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from unbake.exceptions import IntegrityError

__all__ = ["ALGORITHM", "FIELDS", "is_sealed", "seal", "unseal"]

ALGORITHM = "aes-256-gcm"
#: The personal fields of a request, each sealed under a key of its own.
FIELDS = ("reason", "sample_ids")
_PREFIX = '{"nonce":'


def is_sealed(text: Any) -> bool:
    """Whether a stored column value is a sealed one (else clear text of an old catalog)."""
    return isinstance(text, str) and text.startswith(_PREFIX) and f'"{ALGORITHM}"' in text


def _key(cur, request_id: str, field: str) -> bytes:
    """The request's key for ``field``, made (and stored in ``cur``'s transaction) on
    first use: the queue row and the request row of one request share it."""
    cur.execute(
        "INSERT OR IGNORE INTO request_secrets(request_id, field, key) VALUES (?, ?, ?)",
        (request_id, field, AESGCM.generate_key(bit_length=256)),
    )
    row = cur.execute(
        "SELECT key FROM request_secrets WHERE request_id = ? AND field = ?", (request_id, field)
    ).fetchone()
    return bytes(row[0])


def seal(cur, request_id: str, field: str, value: Any) -> str:
    """``value`` (JSON-encodable) sealed under the request's key for ``field``."""
    nonce = os.urandom(12)
    data = json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    box = AESGCM(_key(cur, request_id, field)).encrypt(
        nonce, data, f"{request_id}:{field}".encode()
    )
    return json.dumps(
        {
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": ALGORITHM,
            "value": base64.b64encode(box).decode(),
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def unseal(text: str, key: bytes | None, request_id: str, field: str) -> tuple[Any, bool]:
    """(value, erased): the value sealed in ``text``, or ``(None, True)`` once its key
    (``None``) was destroyed. A sealed value that does not open is a damaged catalog."""
    if key is None:
        return None, True
    try:
        box = json.loads(text)
        nonce, data = base64.b64decode(box["nonce"]), base64.b64decode(box["value"])
        clear = AESGCM(bytes(key)).decrypt(nonce, data, f"{request_id}:{field}".encode())
        return json.loads(clear), False
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise IntegrityError(
            f"The sealed {field} of request {request_id} does not open with its key (the "
            "catalog was altered); restore it from a backup."
        ) from None
