"""The sample store: every sample's identity, split, content hash, status and tombstone.

It owns the ``samples`` table. A sample is ``active`` until a deletion request forgets
it: then its content hash and subject are cleared and it keeps its ID as a tombstone
(so nothing trains on it again), and once its request's IDs are shredded the tombstone
becomes the ID's keyed hash (``hmac:`` + HMAC-SHA256). Writes take the caller's cursor,
so that they commit in the caller's transaction (:meth:`Workspace.commit_staged
<unbake.workspace.Workspace.commit_staged>`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from unbake.data import SPLITS
from unbake.workspace.catalog import Catalog

__all__ = ["TOMBSTONE_PREFIX", "SampleStore"]

#: How a shredded tombstone's sample ID starts (then its keyed hash).
TOMBSTONE_PREFIX = "hmac:"
#: How many IDs one ``IN (...)`` query checks.
_CHUNK = 500


class SampleStore:
    """The ``samples`` table of one catalog; ``keyed_hash(kind, value)`` is the workspace's."""

    def __init__(self, catalog: Catalog, keyed_hash: Callable[[str, str], str]) -> None:
        self.catalog = catalog
        self._keyed_hash = keyed_hash

    # --- writing -------------------------------------------------------------------

    @staticmethod
    def insert(cur: sqlite3.Cursor, rows: Iterable[tuple[str, str | None, str, str]]) -> None:
        """Record a new workspace's samples: (ID, subject, split, content hash), in order."""
        cur.executemany(
            "INSERT INTO samples(row, sample_id, subject, split, content_hash, status) "
            "VALUES (?, ?, ?, ?, ?, 'active')",
            [(i, *r) for i, r in enumerate(rows)],
        )

    @staticmethod
    def mark_forgotten(
        cur: sqlite3.Cursor, sample_ids: Sequence[str], request_id: str, at: str
    ) -> None:
        """Mark ``sample_ids`` forgotten by ``request_id``: content hash and subject go."""
        cur.executemany(
            "UPDATE samples SET status='forgotten', content_hash=NULL, subject=NULL, "
            "request_id=?, forgotten_at=? WHERE sample_id=?",
            [(request_id, at, sid) for sid in sample_ids],
        )

    def shred_ids(self, cur: sqlite3.Cursor, request_id: str) -> None:
        """Turn the tombstones of ``request_id``'s samples into their keyed hashes."""
        rows = cur.execute(
            "SELECT sample_id FROM samples WHERE request_id = ? AND "
            "status = 'forgotten' AND sample_id NOT LIKE ?",
            (request_id, TOMBSTONE_PREFIX + "%"),
        ).fetchall()
        cur.executemany(
            "UPDATE samples SET sample_id = ? WHERE sample_id = ?",
            [(self.tombstone(r["sample_id"]), r["sample_id"]) for r in rows],
        )

    # --- tombstones ----------------------------------------------------------------

    def tombstone(self, sample_id: str) -> str:
        """How a forgotten sample is kept once its request's IDs are shredded: its keyed
        hash (the certificate's ``sample_hmacs`` entry), prefixed ``hmac:``."""
        return TOMBSTONE_PREFIX + self._keyed_hash("sample", sample_id)

    def forgotten_hmacs(self, request_id: str) -> tuple[list[str], list[str]]:
        """(training, held-out) samples ``request_id`` forgot, each as its keyed hash, sorted:
        what its certificate names, from the tombstones (clear or already shredded)."""
        out: dict[bool, list[str]] = {True: [], False: []}
        for r in self.catalog.query(
            "SELECT sample_id, split FROM samples WHERE request_id = ? AND status = 'forgotten'",
            (request_id,),
        ):
            sid = r["sample_id"]
            hashed = sid if sid.startswith(TOMBSTONE_PREFIX) else self.tombstone(sid)
            out[r["split"] == "train"].append(hashed.removeprefix(TOMBSTONE_PREFIX))
        return sorted(out[True]), sorted(out[False])

    def tombstoned(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Those of ``ids`` (absent from the catalog in the clear) that are shredded
        tombstones, each with its row (split, status, request): they were forgotten."""
        hashed = {
            r["sample_id"]: dict(r)
            for r in self.catalog.query(
                "SELECT sample_id, split, status, content_hash, request_id, forgotten_at "
                "FROM samples WHERE sample_id LIKE ?",
                (TOMBSTONE_PREFIX + "%",),
            )
        }
        if not hashed:
            return {}
        found = ((str(i), hashed.get(self.tombstone(str(i)))) for i in ids)
        return {i: row for i, row in found if row is not None}

    # --- reading -------------------------------------------------------------------

    def known(self) -> dict[str, dict[str, Any]]:
        """Every sample by ID: its split, status and content hash."""
        return {
            r["sample_id"]: dict(r)
            for r in self.catalog.query(
                "SELECT sample_id, split, status, content_hash FROM samples"
            )
        }

    def status(self) -> dict[str, str]:
        """Every sample's status (``active`` or ``forgotten``) by ID."""
        return self.catalog.sample_status()

    def split_of(self) -> dict[str, str]:
        """Every sample's split by ID."""
        return {
            r["sample_id"]: r["split"]
            for r in self.catalog.query("SELECT sample_id, split FROM samples")
        }

    def forgotten_held_out(self) -> list[str]:
        """The forgotten validation and test rows (clear IDs or tombstones)."""
        return [
            r["sample_id"]
            for r in self.catalog.query(
                "SELECT sample_id FROM samples WHERE status = 'forgotten' AND split != 'train'"
            )
        ]

    def of_subject(self, subject: str) -> list[str]:
        """The active IDs of ``subject``, in every split (forgotten rows keep no subject)."""
        rows = self.catalog.query(
            "SELECT sample_id FROM samples WHERE subject = ? ORDER BY row", (subject,)
        )
        return [r["sample_id"] for r in rows]

    def forgotten_since(self, ids: list[str], received_at: str) -> set[str]:
        """Those of ``ids`` forgotten at or after ``received_at``."""
        since: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            since.update(
                r["sample_id"]
                for r in self.catalog.query(
                    "SELECT sample_id FROM samples WHERE status = 'forgotten' AND "
                    f"forgotten_at >= ? AND sample_id IN ({marks})",
                    (received_at, *chunk),
                )
            )
        shredded = self.tombstoned([i for i in ids if i not in since])
        since.update(i for i, r in shredded.items() if (r["forgotten_at"] or "") >= received_at)
        return since

    def held_out_info(self, held_ids: Sequence[str]) -> dict[str, Any]:
        """How many rows of each held-out split a request marks forgotten."""
        splits = self.split_of()
        counts = {split: sum(splits.get(i) == split for i in held_ids) for split in SPLITS[1:]}
        return {"held_out": len(held_ids), "held_out_splits": counts}

    def counts(self) -> dict[tuple[str, str], int]:
        """How many samples per (split, status)."""
        return {
            (r["split"], r["status"]): r["n"]
            for r in self.catalog.query(
                "SELECT split, status, COUNT(*) AS n FROM samples GROUP BY split, status"
            )
        }

    def n_subjects(self) -> int:
        """How many subjects own an active sample."""
        return int(
            self.catalog.query(
                "SELECT COUNT(DISTINCT subject) AS n FROM samples "
                "WHERE status='active' AND subject IS NOT NULL"
            )[0]["n"]
        )

    def rows(self, status: str, subject: str | None = None) -> list[sqlite3.Row]:
        """The samples in ``status`` (of ``subject`` if given), in their recorded order."""
        if subject is not None:
            return self.catalog.query(
                "SELECT * FROM samples WHERE status = ? AND subject = ? ORDER BY row",
                (status, subject),
            )
        return self.catalog.query("SELECT * FROM samples WHERE status = ? ORDER BY row", (status,))

    def forgotten_by(self) -> dict[str, str | None]:
        """Each forgotten sample's request (the crash harness checks them)."""
        return {
            r["sample_id"]: r["request_id"]
            for r in self.catalog.query(
                "SELECT sample_id, request_id FROM samples WHERE status='forgotten'"
            )
        }
