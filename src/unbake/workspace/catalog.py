"""The workspace catalog: an embedded SQLite database with a schema version.

Tables: ``samples`` (ID, subject, split, content hash, status), ``models`` (ID,
architecture, config, seed, parent, checkpoint path and sha256, status),
``requests`` (one row per forget operation: what was selected, the method and its
parameters, the model hashes before and after, timings, metrics, outcome, audit), and
``reference_models`` / ``reference_members`` (the audit's reference bank and the
samples each reference trained on, so a deletion can purge every one that saw them).
Older catalogs are migrated forward on open, one version at a time.

Every mutation runs in one transaction. ``secure_delete`` is on, so SQLite
overwrites the bytes of cleared values instead of leaving them in free pages.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unbake.exceptions import WorkspaceError

__all__ = ["SCHEMA_VERSION", "Catalog", "utcnow"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    row INTEGER NOT NULL,
    sample_id TEXT PRIMARY KEY,
    subject TEXT,
    split TEXT NOT NULL,
    content_hash TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'forgotten')),
    request_id TEXT,
    forgotten_at TEXT
);
CREATE INDEX IF NOT EXISTS samples_subject ON samples(subject);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    parent_id TEXT,
    created_at TEXT NOT NULL,
    origin TEXT NOT NULL,
    description TEXT NOT NULL,
    strategy TEXT NOT NULL,
    spec TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    n_train INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'purged'))
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    selector TEXT NOT NULL,
    n_samples INTEGER NOT NULL,
    sample_ids TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('applied', 'failed')),
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    exact INTEGER NOT NULL,
    model_before TEXT NOT NULL,
    hash_before TEXT NOT NULL,
    model_after TEXT,
    hash_after TEXT,
    seconds REAL,
    metrics TEXT,
    info TEXT,
    error TEXT,
    audit TEXT
);
"""

#: Reference models (the audit's bank) and which samples each trained on. Added in v2.
_REFERENCES = """
CREATE TABLE IF NOT EXISTS reference_models (
    ref_id TEXT PRIMARY KEY,
    recipe TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    n_train INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'purged')),
    purged_by TEXT
);
CREATE TABLE IF NOT EXISTS reference_members (
    ref_id TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    PRIMARY KEY (ref_id, sample_id)
);
CREATE INDEX IF NOT EXISTS reference_members_sample ON reference_members(sample_id);
"""

#: Statements that bring a catalog of version N up to N + 1.
_MIGRATIONS = {1: "ALTER TABLE requests ADD COLUMN audit TEXT;" + _REFERENCES}


def _statements(script: str) -> list[str]:
    return [s for s in script.strip().split(";") if s.strip()]


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Catalog:
    """A thin, transactional wrapper over the workspace's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise WorkspaceError(f"Cannot open catalog {path} ({exc}); check the path.") from None
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute("PRAGMA secure_delete = ON")
        self._conn.execute("PRAGMA journal_mode = DELETE")

    def close(self) -> None:
        self._conn.close()

    def initialise(self, meta: dict[str, str]) -> None:
        with self.transaction() as cur:
            for statement in _statements(_SCHEMA + _REFERENCES):
                cur.execute(statement)
            cur.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            cur.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta.items()))

    def check_version(self) -> None:
        try:
            version = self.meta("schema_version")
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(
                f"{self.path} is not an unbake catalog ({exc}); point --workspace at a workspace "
                "folder or a new one."
            ) from None
        while version is not None and version.isdigit() and int(version) in _MIGRATIONS:
            with self.transaction() as cur:
                for statement in _statements(_MIGRATIONS[int(version)]):
                    cur.execute(statement)
                version = str(int(version) + 1)
                cur.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        if version != str(SCHEMA_VERSION):
            raise WorkspaceError(
                f"Catalog schema version {version} is not supported (this unbake reads "
                f"version {SCHEMA_VERSION}); use the unbake version that wrote it."
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")

    # --- reads ---------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def sample_status(self) -> dict[str, str]:
        return {
            r["sample_id"]: r["status"] for r in self.query("SELECT sample_id, status FROM samples")
        }

    def model(self, model_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM models WHERE model_id = ?", (model_id,))
        return rows[0] if rows else None

    def latest_active_model(self) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT * FROM models WHERE status = 'active' ORDER BY created_at DESC, rowid DESC LIMIT 1"
        )
        return rows[0] if rows else None

    def models(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM models ORDER BY created_at, rowid")]

    def requests(self) -> list[dict[str, Any]]:
        out = []
        for r in self.query("SELECT * FROM requests ORDER BY created_at, rowid"):
            row = dict(r)
            for key in ("selector", "sample_ids", "params", "metrics", "info", "audit"):
                if row.get(key):
                    row[key] = json.loads(row[key])
            out.append(row)
        return out
