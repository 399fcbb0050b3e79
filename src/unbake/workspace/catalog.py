"""The workspace catalog: an embedded SQLite database with a schema version.

Tables: ``samples`` (ID, subject, split, content hash, status), ``models`` (ID,
architecture, config, seed, parent, checkpoint path and sha256, status),
``requests`` (one row per forget operation: what was selected, the method and its
parameters, the model hashes before and after, timings, metrics, outcome, audit), and
``reference_models`` / ``reference_members`` (the audit's reference bank and the
samples each reference trained on, so a deletion can purge every one that saw them),
``ledger`` (the hash-chained log of request state transitions, see
:mod:`unbake.workspace.ledger`), ``request_keys`` (client idempotency keys) and
``queue`` (requests filed but not yet applied, with what the worker needs to apply
them) and ``tokens`` (the REST API's bearer tokens, each only as its keyed hash, and
when it was revoked), and ``request_secrets`` (the per-request keys that seal a request's
reason and sample IDs, see :mod:`unbake.workspace.personal`). Older catalogs are migrated
forward on open, one numbered step at a time.

The file is in WAL mode: readers never wait for a writer, and a writer that finds
another writing waits (``busy_timeout``) instead of failing. Each thread gets its own
connection (SQLite connections are not shared between threads), so one
:class:`Catalog` serves a multi-threaded server. Every mutation runs in one
transaction, committed with ``synchronous = FULL`` (durable once it returns).
``secure_delete`` is on, so SQLite overwrites the bytes of cleared values instead of
leaving them in free pages; :meth:`Catalog.checkpoint` folds the WAL back into the
file and truncates it, so no old copy of a cleared page survives there either.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unbake.exceptions import IntegrityError, WorkspaceError
from unbake.workspace.atomic import PRIVATE
from unbake.workspace.ledger import head, last_state, verify_chain
from unbake.workspace.personal import FIELDS, is_sealed, unseal

__all__ = ["SCHEMA_VERSION", "Catalog", "utcnow"]

SCHEMA_VERSION = 9

#: How long a writer waits for another writer before giving up (milliseconds).
BUSY_TIMEOUT_MS = 60_000

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
    audit TEXT,
    seed INTEGER,
    device TEXT,
    unbake_version TEXT,
    reason TEXT,
    submitted_by TEXT
);
"""

#: Reference models (the audit's bank) and which samples each trained on. Added in v3.
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

#: The ledger of request state transitions and the client idempotency keys. Added in v4.
_LEDGER = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_request ON ledger(request_id);
CREATE TABLE IF NOT EXISTS request_keys (
    idempotency_key TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL
);
"""

#: Requests filed and not yet applied: what the worker needs to apply each. Added in v5.
#: ``sample_ids`` is the selection resolved when the request was received (a subject's
#: samples; the subject itself is kept only as its keyed hash in ``selector``); a class
#: is resolved when the request is applied. The row is deleted when the request is done.
_QUEUE = """
CREATE TABLE IF NOT EXISTS queue (
    request_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    selector TEXT NOT NULL,
    sample_ids TEXT NOT NULL,
    class_label TEXT,
    method TEXT,
    params TEXT NOT NULL,
    seed INTEGER,
    device TEXT,
    model_id TEXT,
    reason TEXT,
    submitted_by TEXT
);
"""

#: The columns v5 adds to ``requests``: what reproduces an unlearning run, and who asked.
_REQUEST_PROVENANCE = """
ALTER TABLE requests ADD COLUMN seed INTEGER;
ALTER TABLE requests ADD COLUMN device TEXT;
ALTER TABLE requests ADD COLUMN unbake_version TEXT;
ALTER TABLE requests ADD COLUMN reason TEXT;
ALTER TABLE requests ADD COLUMN submitted_by TEXT;
"""

#: The REST API's bearer tokens (see :mod:`unbake.workspace.tokens`): only each token's
#: keyed hash is kept, with its role. Added in v6.
_TOKENS = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    name TEXT,
    created_at TEXT NOT NULL
);
"""

#: When a token was revoked (``NULL``: valid). Added in v7. A revocation also bumps the
#: ``token_generation`` meta key, so a server's token cache notices it at once.
_TOKEN_REVOCATION = """
ALTER TABLE tokens ADD COLUMN revoked_at TEXT;
"""

#: Each checkpoint's keyed digest, HMAC-SHA256 under the workspace secret of its ID and
#: sha256 (:meth:`unbake.workspace.Workspace.checkpoint_mac`): whoever can rewrite the
#: catalog can recompute a sha256, not this. Added in v8; the plain ``sha256`` stays, as
#: the model hash that certificates and tables show and anyone can recompute. A workspace
#: upgraded from v7 gets the digests on its first writable open, each only after its file
#: matched the sha256 recorded before (:meth:`~unbake.workspace.Workspace._upgrade_records`).
_CHECKPOINT_MACS = """
ALTER TABLE models ADD COLUMN mac TEXT;
ALTER TABLE reference_models ADD COLUMN mac TEXT;
"""

#: The keys that seal each request's personal data (its reason, its sample IDs), one per
#: request and field, kept out of the ledger so that deleting one erases what it sealed
#: (see :mod:`unbake.workspace.personal`). Added in v9.
_SECRETS = """
CREATE TABLE IF NOT EXISTS request_secrets (
    request_id TEXT NOT NULL,
    field TEXT NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (request_id, field)
) WITHOUT ROWID;
"""

#: Statements that bring a catalog of version N up to N + 1.
_MIGRATIONS = {
    2: "ALTER TABLE requests ADD COLUMN audit TEXT;" + _REFERENCES,
    3: _LEDGER,
    4: _REQUEST_PROVENANCE + _QUEUE,
    5: _TOKENS,
    6: _TOKEN_REVOCATION,
    7: _CHECKPOINT_MACS,
    8: _SECRETS,
}

#: Every table of the current schema.
_ALL = "".join(
    (_SCHEMA, _REFERENCES, _LEDGER, _QUEUE, _TOKENS, _TOKEN_REVOCATION, _CHECKPOINT_MACS, _SECRETS)
)


def _statements(script: str) -> list[str]:
    return [s for s in script.strip().split(";") if s.strip()]


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _expected_columns() -> dict[str, list[str]]:
    """Each table of the schema and its columns, read back from an in-memory copy."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_ALL)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        conn.close()


class Catalog:
    """A thin, transactional wrapper over the workspace's SQLite file.

    Every SQLite failure leaves as a typed unbake error with a fix: a damaged file as
    :class:`IntegrityError`, a busy, read-only or unreadable one as :class:`WorkspaceError`.
    ``readonly=True`` opens the file without ever writing to it.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._closed = False
        self._commits = itertools.count()
        self._last_commit = 0
        _ = self._conn  # opened now, so that a bad file is refused by the constructor

    @property
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise WorkspaceError(f"Catalog {self.path} was closed; open the workspace again.")
            conn = self._connect()
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        with self._errors():
            if self.readonly:
                conn = self._connect_readonly()
            else:
                # A new catalog is private; SQLite gives its -wal and -shm files its mode.
                with contextlib.suppress(OSError):  # SQLite names what is wrong with it
                    os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, PRIVATE))
                conn = sqlite3.connect(
                    self.path, isolation_level=None, timeout=30, check_same_thread=False
                )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            if not self.readonly:
                conn.execute("PRAGMA secure_delete = ON")
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that never writes. A WAL catalog in a folder this process cannot
        write has no shared-memory file to read through; once it is known that no WAL
        is left to read, it is opened as immutable (nobody can change it meanwhile)."""
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(
            f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=30, check_same_thread=False
        )
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            if any(self.path.with_name(self.path.name + x).exists() for x in ("-wal", "-journal")):
                raise
            conn = sqlite3.connect(
                f"{uri}?immutable=1", uri=True, isolation_level=None, check_same_thread=False
            )
        return conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's exceptions into unbake's, each naming the cause and the fix."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._convert(exc) from None

    def _convert(self, exc: sqlite3.Error) -> Exception:
        text = str(exc)
        folder = self.path.parent
        if "locked" in text or "busy" in text:
            return WorkspaceError(
                f"Catalog {self.path} is busy with another process ({text}); wait for it "
                "to finish and retry."
            )
        if "readonly" in text or "read-only" in text:
            if self.path.with_name(self.path.name + "-journal").exists():
                return WorkspaceError(
                    f"Catalog {self.path} has an interrupted transaction (its -journal file) "
                    f"that needs write access to roll back; make {folder} writable "
                    f"(chmod -R u+w {folder}) and rerun."
                )
            return WorkspaceError(
                f"Workspace {folder} is read-only ({text}); make it writable "
                f"(chmod -R u+w {folder}) to change it."
            )
        if "unable to open" in text or "disk I/O" in text or "full" in text:
            return WorkspaceError(
                f"Cannot use catalog {self.path} ({text}); check that it is a readable file "
                "and the disk has free space."
            )
        if "not a database" in text:
            return WorkspaceError(
                f"{self.path} is not an unbake catalog ({text}); point --workspace at a "
                "workspace folder or a new one, or restore the catalog from a backup."
            )
        return IntegrityError(
            f"Catalog {self.path} is damaged ({text}); restore it from a backup or start a "
            "new workspace."
        )

    def close(self) -> None:
        """Close every thread's connection (the last one out folds the WAL back in)."""
        with self._guard:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def checkpoint(self) -> bool:
        """Fold the WAL into the catalog file and truncate it (best effort: a reader
        still on an old snapshot keeps it; the next checkpoint finishes the job).
        Returns whether it did all of it."""
        if self.readonly:
            return False
        with contextlib.suppress(sqlite3.Error):
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            return busy == 0
        return False

    def initialise(self, meta: dict[str, str]) -> None:
        with self.transaction() as cur:
            for statement in _statements(_ALL):
                cur.execute(statement)
            cur.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            cur.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta.items()))

    def check_version(self) -> None:
        """Refuse a catalog of another schema version, or one whose tables were altered."""
        version = self.meta("schema_version")
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
        for table, columns in _expected_columns().items():
            found = [r["name"] for r in self.query(f"PRAGMA table_info({table})")]
            if found != columns:
                what = "is missing" if not found else "has other columns than this unbake writes"
                raise self.damaged(f"table {table!r} {what}")

    def check_integrity(self) -> None:
        """SQLite's own page-level check; a damaged page is refused before it is read."""
        problems = [r[0] for r in self.query("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise IntegrityError(
                f"Catalog {self.path} is damaged ({problems[0]}); restore it from a backup or "
                "start a new workspace."
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._errors():
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._convert(exc) from None
            raise
        else:
            with self._errors():
                cur.execute("COMMIT")
            self._last_commit = next(self._commits) + 1

    @staticmethod
    @contextlib.contextmanager
    def savepoint(cur: sqlite3.Cursor) -> Iterator[None]:
        """A nested part of ``cur``'s transaction: an exception rolls back only it."""
        cur.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            cur.execute("ROLLBACK TO part")
            cur.execute("RELEASE part")
            raise
        cur.execute("RELEASE part")

    def data_version(self) -> tuple[int, int, int]:
        """A cheap mark (no table read) that changes whenever a transaction commits to the
        catalog file: SQLite's ``PRAGMA data_version`` of this thread's connection (commits
        by other connections and processes) with this catalog's own commit count (commits
        of this connection, which the pragma does not count). Compare only marks read in
        the same thread: each connection counts on its own."""
        conn = self._conn
        with self._errors():
            version = conn.execute("PRAGMA data_version").fetchone()[0]
        return id(conn), version, self._last_commit

    # --- reads ---------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def reader(self) -> sqlite3.Connection:
        """This thread's connection, for the ledger's read helpers (never for writes:
        those go through :meth:`transaction`)."""
        return self._conn

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._errors():
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

    def damaged(self, what: str) -> IntegrityError:
        """The one-line error for a catalog whose contents are not what unbake wrote."""
        return IntegrityError(
            f"Catalog {self.path} is damaged: {what}; restore it from a backup or start a new "
            "workspace."
        )

    def parse_json(self, text: str, what: str) -> Any:
        """A JSON value stored in the catalog; junk there is a damaged catalog."""
        try:
            return json.loads(text)
        except (TypeError, ValueError) as exc:
            raise self.damaged(f"{what} is not valid JSON ({exc})") from None

    def ledger_rows(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM ledger ORDER BY seq")

    def verify_ledger(self) -> tuple[int, str]:
        """Recompute the ledger's hash chain; returns its head (entries, hash)."""
        return verify_chain(self.ledger_rows(), self.meta("ledger_head"))

    def ledger_head(self) -> tuple[int, str]:
        """(seq, hash) of the newest ledger entry."""
        with self._errors():
            return head(self._conn)

    def request_entries(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """Ledger entries (of one request, or all), oldest first, with payloads parsed."""
        if request_id is None:
            rows = self.ledger_rows()
        else:
            rows = self.query(
                "SELECT * FROM ledger WHERE request_id = ? ORDER BY seq", (request_id,)
            )
        return [
            {**dict(r), "payload": self.parse_json(r["payload"], f"ledger entry {r['seq']}")}
            for r in rows
        ]

    def request_state(self, request_id: str) -> str | None:
        """A request's latest ledger state (``None``: not in the ledger)."""
        with self._errors():
            return last_state(self._conn, request_id)

    def secrets(self, request_id: str | None = None) -> dict[tuple[str, str], bytes]:
        """The keys that seal requests' personal data, by (request ID, field)."""
        rows = (
            self.query("SELECT * FROM request_secrets")
            if request_id is None
            else self.query("SELECT * FROM request_secrets WHERE request_id = ?", (request_id,))
        )
        return {(r["request_id"], r["field"]): bytes(r["key"]) for r in rows}

    def open_personal(
        self, row: dict[str, Any], keys: dict[tuple[str, str], bytes] | None = None
    ) -> dict[str, Any]:
        """``row`` (of ``requests`` or ``queue``) with its sealed reason and sample IDs
        opened in place, and ``erased``: which of them were erased (their key destroyed;
        they then read ``None``). Clear values of a catalog from before v9 pass as they are."""
        rid = row["request_id"]
        keys = self.secrets(rid) if keys is None else keys
        erased = {}
        for field in FIELDS:
            value = row.get(field)
            if is_sealed(value):
                row[field], erased[field] = unseal(str(value), keys.get((rid, field)), rid, field)
            else:
                if field == "sample_ids" and isinstance(value, str):
                    row[field] = self.parse_json(value, f"request {rid}'s sample_ids")
                erased[field] = False
        row["erased"] = erased
        return row

    def requests(self) -> list[dict[str, Any]]:
        """Every applied request, oldest first, its JSON columns parsed and its personal
        data opened (:meth:`open_personal`)."""
        out = []
        keys = self.secrets()
        for r in self.query("SELECT * FROM requests ORDER BY created_at, rowid"):
            row = self.open_personal(dict(r), keys)
            for key in ("selector", "params", "metrics", "info", "audit"):
                if row.get(key):
                    row[key] = self.parse_json(row[key], f"request {row['request_id']}'s {key}")
            out.append(row)
        return out
