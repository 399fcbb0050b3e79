"""Bearer tokens of the REST API, each with one role; only their keyed hashes are stored.

A token is ``ubk_<token id>_<43 random URL-safe characters>``. :func:`create_token`
returns it once; the catalog's ``tokens`` table keeps the token ID, the role and
``HMAC-SHA256(workspace secret, "token:" + token)``, so a copy of the catalog alone does
not let anyone call the API. Roles:

- ``submitter``: files deletion requests and reads its own;
- ``auditor``: reads every request, its ledger entries and certificates, and the model;
- ``operator``: everything.

>>> import tempfile
>>> from unbake.workspace import Workspace
>>> ws = Workspace.create(tempfile.mkdtemp() + "/ws", dataset="digits")
>>> token, token_id = create_token(ws, "auditor")
>>> authenticate(ws, token).role, authenticate(ws, token + "x")
('auditor', None)
>>> ws.close()
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unbake.exceptions import InvalidParameterError
from unbake.workspace.catalog import utcnow

if TYPE_CHECKING:
    from unbake.workspace.workspace import Workspace

__all__ = ["ROLES", "Principal", "authenticate", "create_token", "list_tokens"]

ROLES = ("submitter", "operator", "auditor")
_PREFIX = "ubk_"
#: A token longer than this is refused before it is hashed.
_MAX_TOKEN = 200


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    token_id: str
    role: str

    @property
    def name(self) -> str:
        """How requests this token files record their submitter."""
        return f"token:{self.token_id}"


def create_token(ws: Workspace, role: str, *, name: str | None = None) -> tuple[str, str]:
    """Make a token for ``role``; returns ``(token, token_id)``. The token is not stored."""
    if role not in ROLES:
        raise InvalidParameterError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidParameterError(f"A token's name must be a short string; got {name!r}.")
    ws.check_writable()
    token_id = secrets.token_hex(6)
    token = f"{_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    with ws.catalog.transaction() as cur:
        cur.execute(
            "INSERT INTO tokens(token_id, token_hash, role, name, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (token_id, ws.keyed_hash("token", token), role, name, utcnow()),
        )
    return token, token_id


def authenticate(ws: Workspace, token: str) -> Principal | None:
    """The principal of ``token``, or ``None`` for an unknown or malformed one."""
    if not token.startswith(_PREFIX) or len(token) > _MAX_TOKEN:
        return None
    rows = ws.catalog.query(
        "SELECT token_id, role FROM tokens WHERE token_hash = ?",
        (ws.keyed_hash("token", token),),
    )
    return Principal(rows[0]["token_id"], rows[0]["role"]) if rows else None


def list_tokens(ws: Workspace) -> list[dict[str, str]]:
    """Every token's ID, role, name and creation time (never the token itself)."""
    return [
        dict(r)
        for r in ws.catalog.query(
            "SELECT token_id, role, name, created_at FROM tokens ORDER BY created_at, rowid"
        )
    ]
