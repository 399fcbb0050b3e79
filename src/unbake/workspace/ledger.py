"""The ledger: an append-only, hash-chained log of deletion-request state transitions.

Each entry is ``(seq, request_id, state, timestamp, payload, prev_hash, hash)`` where
``hash`` is the SHA-256 of a canonical JSON encoding of the other six fields and
``prev_hash`` is the hash of the entry before it (64 zeros for the first). Editing,
deleting or reordering any entry breaks the chain at that entry; :func:`verify_chain`
names the first one. The head (its seq and hash) is also kept in the ``meta`` table,
so that dropping entries from the end is caught too.

States: ``received → queued → applying → applied → verified → certified``, or
``rejected`` (a bad request) and ``failed`` (with the reason).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from unbake.exceptions import IntegrityError, WorkspaceError

__all__ = [
    "GENESIS",
    "STATES",
    "append_entry",
    "canonical_json",
    "deadline",
    "entry_hash",
    "head",
    "verify_chain",
]

GENESIS = "0" * 64

#: Each state and the states it may follow (``None``: the first entry of a request).
TRANSITIONS: dict[str, tuple[str | None, ...]] = {
    "received": (None,),
    "queued": ("received", "failed", "applying"),  # from applying: a worker died; retried
    "applying": ("received", "queued", "failed"),
    "applied": ("applying",),
    "verified": ("applied", "verified", "certified"),
    "certified": ("applied", "verified", "certified"),
    "rejected": (None, "received", "queued"),
    "failed": ("received", "queued", "applying"),
}
STATES = tuple(TRANSITIONS)
#: States after which a request's data is gone from the model.
DONE = ("applied", "verified", "certified")


def deadline(received: datetime, days: str | int | None = None) -> str:
    """``days`` after ``received``, or by default the same day of the next month (the
    last day of that month where it has no such day)."""
    if days is not None:
        return (received + timedelta(days=int(days))).isoformat(timespec="microseconds")
    year, month = (
        (received.year + 1, 1) if received.month == 12 else (received.year, received.month + 1)
    )
    day = min(received.day, calendar.monthrange(year, month)[1])
    return received.replace(year=year, month=month, day=day).isoformat(timespec="microseconds")


def canonical_json(value: Any) -> str:
    """The one encoding that is hashed and signed: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(
    seq: int, request_id: str, state: str, timestamp: str, payload: str, prev_hash: str
) -> str:
    fields = [seq, request_id, state, timestamp, payload, prev_hash]
    return hashlib.sha256(canonical_json(fields).encode("ascii")).hexdigest()


def head(cur: sqlite3.Cursor | Any) -> tuple[int, str]:
    """(seq, hash) of the newest entry, or ``(0, GENESIS)`` for an empty ledger."""
    row = cur.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


def last_state(cur, request_id: str) -> str | None:
    row = cur.execute(
        "SELECT state FROM ledger WHERE request_id = ? ORDER BY seq DESC LIMIT 1", (request_id,)
    ).fetchone()
    return row[0] if row else None


def append_entry(
    cur, request_id: str, state: str, payload: dict[str, Any], timestamp: str
) -> tuple[int, str]:
    """Append one transition inside ``cur``'s transaction; returns its (seq, hash).

    A transition the state machine does not allow is refused (a bug, or a request
    driven twice), so the ledger never records an impossible history.
    """
    previous = last_state(cur, request_id)
    if previous not in TRANSITIONS[state]:
        raise WorkspaceError(
            f"Request {request_id} cannot go from {previous or 'nothing'} to {state}; "
            "see its history with `unbake log`."
        )
    seq, prev_hash = head(cur)
    seq += 1
    body = canonical_json(payload)
    digest = entry_hash(seq, request_id, state, timestamp, body, prev_hash)
    cur.execute(
        "INSERT INTO ledger(seq, request_id, state, timestamp, payload, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, request_id, state, timestamp, body, prev_hash, digest),
    )
    cur.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('ledger_head', ?)",
        (canonical_json([seq, digest]),),
    )
    return seq, digest


def _tampered(where: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"Ledger {where} {what}; the ledger was tampered with: restore the catalog from a "
        "backup and compare the two."
    )


def verify_chain(rows: Iterable[Any], recorded_head: str | None) -> tuple[int, str]:
    """Recompute the chain over ``rows`` (in seq order); returns the head (seq, hash).

    Raises :class:`IntegrityError` naming the first entry that was edited, deleted or
    reordered, or the end of the ledger if entries were dropped from it.
    """
    rows = list(rows)
    prev = GENESIS
    for position, r in enumerate(rows, start=1):
        where = f"entry {position}"
        if r["seq"] > position:
            raise _tampered(where, f"was deleted (the sequence jumps to {r['seq']})")
        fields = (r["request_id"], r["state"], r["timestamp"], r["payload"], r["prev_hash"])
        if entry_hash(position, *fields) != r["hash"]:
            # Written at another position? Then it was moved; otherwise its contents changed.
            origin = next(
                (s for s in range(1, len(rows) + 2) if entry_hash(s, *fields) == r["hash"]), None
            )
            if origin is not None:
                raise _tampered(
                    where,
                    f"is out of place (it was entry {origin}): entries were reordered or "
                    "deleted before it",
                )
            raise _tampered(
                f"{where} (request {r['request_id']}, {r['state']})",
                "was edited (its hash does not match its contents)",
            )
        if r["prev_hash"] != prev:
            raise _tampered(
                where, "does not follow the entry before it (one was deleted or reordered)"
            )
        prev = r["hash"]
    found = (len(rows), prev)
    if recorded_head is not None and recorded_head != canonical_json(list(found)):
        raise _tampered(
            f"end (after entry {len(rows)})",
            f"does not match the recorded head {recorded_head}: entries were deleted from the end",
        )
    return found
