"""Bearer tokens of the REST API, each with one role; only their keyed hashes are stored.

A token is ``ubk_<token id>_<43 random URL-safe characters>``. :func:`create_token`
returns it once; the catalog's ``tokens`` table keeps the token ID, the role and
``HMAC-SHA256(workspace secret, "token:" + token)``, so a copy of the catalog alone does
not let anyone call the API. :func:`revoke_token` marks a token revoked (the row stays, so
the requests it filed still name it); a revoked token no longer authenticates, and a
running server's :class:`TokenCache` drops what it remembered on the next request.
Roles:

- ``submitter``: files deletion requests and reads its own;
- ``auditor``: reads every request, its ledger entries and certificates, and the model;
- ``operator``: everything.

>>> import tempfile
>>> from unbake.workspace import Workspace
>>> ws = Workspace.create(tempfile.mkdtemp() + "/ws", dataset="digits")
>>> token, token_id = create_token(ws, "auditor")
>>> authenticate(ws, token).role, authenticate(ws, token + "x")
('auditor', None)
>>> revoke_token(ws, token_id)["revoked"], authenticate(ws, token)
(True, None)
>>> ws.close()
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unbake.exceptions import InvalidParameterError, NotFoundError
from unbake.workspace.catalog import utcnow

if TYPE_CHECKING:
    from unbake.workspace.workspace import Workspace

__all__ = [
    "ROLES",
    "Principal",
    "TokenCache",
    "authenticate",
    "create_token",
    "list_tokens",
    "revoke_token",
]

ROLES = ("submitter", "operator", "auditor")
_PREFIX = "ubk_"
#: A token longer than this is refused before it is hashed.
_MAX_TOKEN = 200
#: The catalog meta key that each revocation bumps (see :class:`TokenCache`).
GENERATION_KEY = "token_generation"


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
        "SELECT token_id, role FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
        (ws.keyed_hash("token", token),),
    )
    return Principal(rows[0]["token_id"], rows[0]["role"]) if rows else None


def list_tokens(ws: Workspace) -> list[dict[str, str | None]]:
    """Every token's ID, role, name, creation and revocation time (``None``: valid),
    never the token itself."""
    return [
        dict(r)
        for r in ws.catalog.query(
            "SELECT token_id, role, name, created_at, revoked_at FROM tokens "
            "ORDER BY created_at, rowid"
        )
    ]


def revoke_token(ws: Workspace, token_id: str) -> dict[str, str | bool | None]:
    """Revoke the token ``token_id`` (as :func:`list_tokens` shows it): it authenticates
    no more, here or in a running server. Revoking a revoked token changes nothing.
    Returns its row with ``revoked`` (``False``: it was revoked before, at ``revoked_at``).
    """
    ws.check_writable()
    with ws.catalog.transaction() as cur:
        row = cur.execute(
            "SELECT token_id, role, name, created_at, revoked_at FROM tokens WHERE token_id = ?",
            (token_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"No token {token_id!r} in this workspace; `unbake token list` shows the token IDs."
            )
        if row["revoked_at"] is not None:
            return {**dict(row), "revoked": False}
        now = utcnow()
        cur.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ?", (now, token_id))
        cur.execute(
            "INSERT INTO meta(key, value) VALUES (?, '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (GENERATION_KEY,),
        )
    return {**dict(row), "revoked_at": now, "revoked": True}


class TokenCache:
    """Remembers valid tokens for a server, so a busy client costs no HMAC and no token
    read a request, and still sees a revocation on its next request.

    A token is remembered for ``seconds``, at most ``size`` of them. Each call reads the
    catalog's :meth:`~unbake.workspace.catalog.Catalog.data_version` (a pragma, no table
    read); only after a commit (by any process) does it read the revocation counter,
    and a new one forgets every token. Revocations by ``unbake token revoke`` in another
    process are thus seen by the first request after they commit.
    """

    def __init__(self, ws: Workspace, *, seconds: float = 60.0, size: int = 10_000) -> None:
        self.ws, self.seconds, self.size = ws, seconds, size
        self._known: dict[str, tuple[Principal, float]] = {}  # token -> (who, valid until)
        self._mark: tuple[int, int, int] | None = None
        self._generation: str | None = None
        self._lock = threading.Lock()

    def _check_revocations(self) -> None:
        mark = self.ws.catalog.data_version()
        if mark == self._mark:
            return
        generation = self.ws.catalog.meta(GENERATION_KEY)
        if generation != self._generation:
            self._known.clear()
            self._generation = generation
        self._mark = mark

    def principal(self, token: str) -> Principal | None:
        """Who ``token`` speaks for; ``None`` when it is unknown, malformed or revoked."""
        with self._lock:
            self._check_revocations()
            found = self._known.get(token)
            if found is not None and found[1] >= time.monotonic():
                return found[0]
            who = authenticate(self.ws, token)
            if who is not None:
                if len(self._known) >= self.size:
                    self._known.clear()
                self._known[token] = (who, time.monotonic() + self.seconds)
            return who
