"""The workspace: one folder holding the catalog and the checkpoints of one dataset's models.

Every mutating operation holds an exclusive lock on the folder (a second writer waits
for it), validates everything before writing anything, writes new checkpoint files atomically, commits the catalog in
one SQLite transaction, and only then deletes what the transaction made stale. A bad
request therefore leaves the workspace exactly as it was, and a crash at any point
leaves it consistent (stale files are swept on the next open that finds no writer).
Readers take no lock: the catalog is in WAL mode, so they never wait for a writer.

This is the storage layer: it keeps the catalog, the checkpoints and the ledger, checks
the data source against them, and records a trained model, an applied request or a
failure in one transaction each. Running a method (training, unlearning, evaluating,
auditing) and deciding what to apply is the service layer's
(:mod:`unbake.service.apply`, :mod:`unbake.service.audit`, :mod:`unbake.service.deletion`),
which imports this module and is never imported by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from unbake._version import __version__
from unbake.data import DATASETS, SPLITS, Dataset, Samples, content_hashes, load_dataset
from unbake.data.standardize import recorded_options
from unbake.evaluation import Evaluation
from unbake.exceptions import (
    DatasetError,
    EmptyRequestError,
    IntegrityError,
    InvalidParameterError,
    UnbakeError,
    UnknownNameError,
    UnknownSampleError,
    WorkspaceError,
    without_paths,
)
from unbake.methods import UnlearnResult
from unbake.training import TrainedModel, resolve_device
from unbake.workspace import ledger, personal
from unbake.workspace.atomic import (
    PRIVATE,
    PRIVATE_DIR,
    TMP_SUFFIX,
    atomic_write_bytes,
    sha256_bytes,
    sha256_file,
)
from unbake.workspace.catalog import Catalog, utcnow
from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint
from unbake.workspace.keys import SECRET, create_secret, keyed_hash, load_secret
from unbake.workspace.ledger import canonical_json
from unbake.workspace.reopen import MEMORY, check_same_data, memory_spec

__all__ = [
    "DEFAULT_WORKSPACE",
    "STUCK_AFTER",
    "ApplyOutcome",
    "ForgetSelector",
    "RequestPart",
    "RequestRecord",
    "StagedApply",
    "Ticket",
    "Workspace",
    "check_workspace_path",
    "failure_reason",
    "new_id",
]

DEFAULT_WORKSPACE = "unbake-workspace"
#: How a shredded tombstone's sample ID starts (then its keyed hash).
TOMBSTONE_PREFIX = "hmac:"
#: Each personal field's workspace-meta retention key and its default (days after the
#: request is done): the reason goes at once, the IDs after the deletion's proof window,
#: in which an audit of the request (which needs its IDs) can still be run.
RETENTION = {"reason": ("reason_retention_days", 0), "sample_ids": ("id_retention_days", 30)}
#: The ledger states that end a request, and start its retention clock.
SHRED_AFTER = ("certified", "rejected", "failed")
#: Seconds after which a request still ``applying`` counts as stuck (``unbake status``,
#: ``/healthz``): no deletion run of unbake's own takes that long on the data it serves.
STUCK_AFTER = 900.0
CATALOG = "catalog.sqlite"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class ForgetSelector:
    """What a deletion request names: sample IDs, a subject, or a class label."""

    ids: tuple[str, ...] = ()
    subject: str | None = None
    label: str | int | None = None

    def to_dict(self, subject_hash: Callable[[str], str]) -> dict[str, Any]:
        """What is recorded: the number of IDs, the subject's keyed hash, the class."""
        out: dict[str, Any] = {}
        if self.ids:
            out["ids"] = len(self.ids)
        if self.subject is not None:
            out["subject_hmac"] = subject_hash(self.subject)
        if self.label is not None:
            out["class"] = self.label
        return out


@dataclass(frozen=True)
class RequestRecord:
    """What a deletion request did.

    ``n_samples`` training samples were unlearned and ``n_held_out`` validation or test
    rows were marked forgotten. A request that selects no training sample changes no
    model: then ``model_after == model_before`` and ``evaluation`` and ``result`` are
    ``None``.
    """

    request_id: str
    model_before: str
    model_after: str
    method: str
    n_samples: int
    seconds: float
    evaluation: Evaluation | None
    result: UnlearnResult | None
    n_held_out: int = 0

    @property
    def changed_model(self) -> bool:
        return self.model_after != self.model_before


def failure_reason(exc: BaseException, root: str | os.PathLike | None = None) -> str:
    """``exc`` as one line of at most 500 characters, for a ``failed`` ledger entry. Its
    submitter reads it (``GET /v1/requests/{id}``), so it holds no filesystem path: the
    workspace folder ``root`` reads ``<workspace>``, any other absolute path ``<path>``."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return without_paths(text, () if root is None else (root,))[:500]


@dataclass
class Ticket:
    """A request in flight: what its first ledger entries (received, applying) will say."""

    request_id: str
    received_at: str
    selector: dict[str, Any]
    key_hash: str | None = None
    fingerprint: str = ""
    started_at: str = field(default_factory=utcnow)
    #: Keyed hashes of the personal data (``reason_hmac``, ``ids_hmac``) for ``received``.
    personal: dict[str, str] = field(default_factory=dict)


@dataclass
class RequestPart:
    """One request's share of an unlearning run: its training and held-out sample IDs."""

    ticket: Ticket
    sample_ids: list[str]
    held_ids: list[str]
    submitted_by: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ApplyOutcome:
    """What one unlearning run (of one or more requests) produced."""

    model_before: str
    model_after: str
    method: str
    result: UnlearnResult | None
    evaluation: Evaluation | None

    def record(self, part: RequestPart) -> RequestRecord:
        """The :class:`RequestRecord` of ``part``'s request."""
        return RequestRecord(
            part.ticket.request_id,
            self.model_before,
            self.model_after,
            self.method,
            len(part.sample_ids),
            self.result.seconds if self.result else 0.0,
            self.evaluation,
            self.result,
            len(part.held_ids),
        )


@dataclass
class StagedApply:
    """An unlearning run done in memory and not yet written
    (:func:`unbake.service.apply.stage_parts`; :meth:`Workspace.commit_staged` records it):
    ``result`` and ``evaluation`` are ``None`` when the parts name only held-out rows."""

    parts: list[RequestPart]
    unlearner: Any
    model_id: str | None
    row: Any
    result: UnlearnResult | None
    evaluation: Evaluation | None
    n_retain: int
    provenance: dict[str, Any]


def _purge_references(
    cur, sample_ids: Sequence[str], request_id: str
) -> tuple[list[str], list[str]]:
    """Mark every reference model that trained on ``sample_ids`` purged (in ``cur``'s transaction).

    Returns their IDs and their checkpoint files (to delete after the commit); their
    membership rows go too, so no record of a forgotten sample's use survives.
    """
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS _forget_ids (sample_id TEXT PRIMARY KEY)")
    cur.execute("DELETE FROM _forget_ids")
    cur.executemany("INSERT OR IGNORE INTO _forget_ids VALUES (?)", [(s,) for s in sample_ids])
    rows = cur.execute(
        "SELECT ref_id, checkpoint FROM reference_models WHERE status='active' AND ref_id IN "
        "(SELECT ref_id FROM reference_members JOIN _forget_ids USING (sample_id)) ORDER BY ref_id"
    ).fetchall()
    refs = [r["ref_id"] for r in rows]
    cur.executemany(
        "UPDATE reference_models SET status='purged', purged_by=? WHERE ref_id=?",
        [(request_id, r) for r in refs],
    )
    cur.executemany("DELETE FROM reference_members WHERE ref_id=?", [(r,) for r in refs])
    cur.execute("DELETE FROM _forget_ids")
    return refs, [r["checkpoint"] for r in rows]


def unbake_version() -> str:
    return __version__


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({v for v in values if v in seen or seen.add(v)})


def check_workspace_path(root: str | os.PathLike) -> Path:
    """``root`` as a Path, refused if it exists and is not a folder."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise WorkspaceError(
            f"Workspace path {root} is a file, not a folder; point --workspace at a workspace "
            "folder or a path that does not exist yet."
        )
    return root


def _writable(root: Path) -> bool:
    """Whether this process may change the workspace (its folder, catalog and lock file)."""
    paths = (root, root / CATALOG, root / CHECKPOINTS, root / ".lock")
    return all(os.access(p, os.W_OK) for p in paths if p.exists())


class Workspace:
    """A workspace folder. Use :meth:`create` or :meth:`open`, and ``close`` when done.

    It stores and records; the work on it (training, deletion requests, audits) is the
    service layer's (:class:`unbake.service.DeletionService`, :mod:`unbake.service.apply`).

    Examples
    --------
    >>> import tempfile
    >>> ws = Workspace.create(tempfile.mkdtemp() + "/ws", dataset="digits")
    >>> ws.status()["samples"]["active"] == len(ws.dataset().train), ws.status()["models"]
    (True, [])
    >>> ws.close()
    """

    def __init__(self, root: Path, catalog: Catalog) -> None:
        self.root = root
        self.catalog = catalog
        self._dataset: Dataset | None = None
        self._secret: bytes | None = None

    # --- opening -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | os.PathLike = DEFAULT_WORKSPACE,
        *,
        dataset: str | Dataset = "digits",
        dataset_options: dict[str, Any] | None = None,
    ) -> Workspace:
        """Create a new workspace for ``dataset``; the folder must not hold one already.

        The dataset is loaded and checked before anything is written.
        """
        root = check_workspace_path(root)
        if (root / CATALOG).exists():
            raise WorkspaceError(
                f"{root} already holds a workspace; open it, or pick another --workspace."
            )
        if isinstance(dataset, Dataset):
            ds = dataset
            if ds.spec.get("name") not in DATASETS:
                # In-memory data cannot be reloaded by name later; keep it on the instance
                # (reopened with Workspace.open(root, dataset=ds), checked by reopen.py).
                ds = replace(ds, spec=memory_spec(ds))
        else:
            ds = load_dataset(dataset, **(dataset_options or {}))
        ds.check()
        root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        (root / CHECKPOINTS).mkdir(exist_ok=True, mode=PRIVATE_DIR)
        (root / ".lock").touch(mode=PRIVATE)
        catalog = Catalog(root / CATALOG)
        try:
            create_secret(root)
            catalog.initialise(
                {
                    "dataset": json.dumps(ds.spec, sort_keys=True),
                    "dataset_name": ds.name,
                    "created_at": utcnow(),
                }
            )
            rows = [
                (str(sid), str(subj) or None, split, h)
                for split, samples in ds.splits().items()
                for sid, subj, h in zip(
                    samples.ids, samples.subjects, content_hashes(samples), strict=True
                )
            ]
            duplicated = _duplicates([r[0] for r in rows])
            if duplicated:
                raise DatasetError(
                    f"Sample IDs {duplicated[:5]} appear in more than one split; "
                    "give every sample of the dataset its own ID."
                )
            with catalog.transaction() as cur:
                cur.executemany(
                    "INSERT INTO samples(row, sample_id, subject, split, content_hash, status) "
                    "VALUES (?, ?, ?, ?, ?, 'active')",
                    [(i, *r) for i, r in enumerate(rows)],
                )
        except BaseException:
            catalog.close()
            with contextlib.suppress(OSError):
                (root / CATALOG).unlink()
                (root / SECRET).unlink()
            raise
        ws = cls(root, catalog)
        ws._dataset = ds
        return ws

    @classmethod
    def open(
        cls,
        root: str | os.PathLike = DEFAULT_WORKSPACE,
        *,
        read_only: bool = False,
        dataset: Dataset | None = None,
    ) -> Workspace:
        """Open a workspace; stray files of an interrupted operation are swept first
        (unless another process is writing it: then they may be its own, and wait).

        A workspace this process cannot write (or ``read_only=True``) opens read-only:
        reading works and writes nothing, and any change is refused with a
        :class:`WorkspaceError`. ``dataset`` reopens a workspace created from data defined
        in Python, once it is checked to be the same data (the recorded sample IDs,
        splits and per-sample content hashes, :mod:`unbake.workspace.reopen`); a
        different one is refused with a :class:`DatasetError` naming the first sample
        that differs, and nothing is written.
        """
        root = check_workspace_path(root)
        if not (root / CATALOG).is_file():
            raise WorkspaceError(
                f"No workspace at {root}; create one with `unbake train --workspace {root} "
                "--dataset NAME`."
            )
        readonly = read_only or not _writable(root)
        catalog = Catalog(root / CATALOG, readonly=readonly)
        try:
            catalog.check_version()
            catalog.check_integrity()
            ws = cls(root, catalog)
            if dataset is not None:
                check_same_data(ws, dataset)
                ws._dataset = dataset
            if not readonly:
                with ws.lock(wait=False) as held:
                    if held:
                        ws.sweep()
                        ws._upgrade_records()
                        ws._key_checkpoints()
        except BaseException:
            catalog.close()
            raise
        return ws

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_writable(self) -> None:
        """Refuse a change to a workspace opened read-only, naming the fix."""
        if self.catalog.readonly:
            raise WorkspaceError(
                f"Workspace {self.root} is read-only; make it writable "
                f"(chmod -R u+w {self.root}) to change it, or copy it."
            )

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[bool]:
        """An exclusive, cross-process lock on the workspace; a writer waits for another.

        With ``wait=False`` it does not wait and yields whether it got the lock.
        """
        self.check_writable()
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sweep(self) -> None:
        """Remove temp files, checkpoints the catalog no longer references, and a stale journal
        (the caller holds :meth:`lock`).

        Opening the catalog has already rolled back a hot journal (SQLite deletes it); one
        still there while this process holds the lock is stale, so it goes too.
        """
        (self.root / f"{CATALOG}-journal").unlink(missing_ok=True)
        live = {
            r["checkpoint"]
            for table in ("models", "reference_models")
            for r in self.catalog.query(f"SELECT checkpoint FROM {table} WHERE status='active'")
        }
        for path in (self.root / CHECKPOINTS).glob("*"):
            rel = f"{CHECKPOINTS}/{path.name}"
            if path.name.endswith(TMP_SUFFIX) or rel not in live:
                path.unlink(missing_ok=True)

    def _upgrade_records(self) -> None:
        """Bring a workspace from before the ledger up to date (idempotent).

        It gets its secret; requests recorded with a subject in the clear get its keyed
        hash instead (``secure_delete`` overwrites the old bytes); and each request the
        ledger lacks is entered as received, applying and applied at its recorded time,
        marked ``backfilled``. Reasons and sample IDs stored in the clear (before v9) are
        sealed (:mod:`~unbake.workspace.personal`); the ledger entries of those requests keep
        theirs, since rewriting them would break the chain.
        """
        if not (self.root / SECRET).exists():
            create_secret(self.root)
        self._seal_clear_records()
        entered = {r["request_id"] for r in self.catalog.query("SELECT request_id FROM ledger")}
        stale = [
            r
            for r in self.catalog.requests()
            if "subject" in r["selector"] or r["request_id"] not in entered
        ]
        if not stale:
            return
        with self.catalog.transaction() as cur:
            for r in stale:
                selector = dict(r["selector"])
                if "subject" in selector:
                    selector["subject_hmac"] = self.subject_hmac(str(selector.pop("subject")))
                    cur.execute(
                        "UPDATE requests SET selector = ? WHERE request_id = ?",
                        (json.dumps(selector), r["request_id"]),
                    )
                if r["request_id"] not in entered:
                    at, rid = r["created_at"], r["request_id"]
                    received = {"selector": selector, "deadline": self.deadline_for(at)}
                    ledger.append_entry(cur, rid, "received", {**received, "backfilled": True}, at)
                    applying = {"method": r["method"], "model_before": r["model_before"]}
                    ledger.append_entry(cur, rid, "applying", {**applying, "backfilled": True}, at)
                    applied = {"model_after": r["model_after"], "backfilled": True}
                    ledger.append_entry(cur, rid, "applied", applied, at)

    def _key_checkpoints(self) -> None:
        """Give each active checkpoint of a workspace from before keyed digests (v7) its
        keyed digest, once its file matches the sha256 recorded then (idempotent). One
        that does not match stays without, and is refused when loaded."""
        keyed = []
        for table, ident in (("models", "model_id"), ("reference_models", "ref_id")):
            for r in self.catalog.query(
                f"SELECT {ident} AS id, checkpoint, sha256 FROM {table} "
                "WHERE mac IS NULL AND status = 'active'"
            ):
                path = self.root / r["checkpoint"]
                if path.is_file() and sha256_file(path) == r["sha256"]:
                    mac = self.checkpoint_mac(r["id"], r["sha256"])
                    keyed.append((f"UPDATE {table} SET mac = ? WHERE {ident} = ?", (mac, r["id"])))
        if keyed:
            with self.catalog.transaction() as cur:
                for sql, args in keyed:
                    cur.execute(sql, args)

    def _seal_clear_records(self) -> None:
        """Seal each reason and sample-ID list of ``requests`` and ``queue`` stored in the
        clear by an unbake before v9 (idempotent; ``secure_delete`` overwrites the old bytes)."""
        clear = [
            (table, r["request_id"], f, r[f])
            for table in ("requests", "queue")
            for r in self.catalog.query(f"SELECT request_id, reason, sample_ids FROM {table}")
            for f in personal.FIELDS
            if r[f] is not None and not personal.is_sealed(r[f])
        ]
        if not clear:
            return
        with self.catalog.transaction() as cur:
            for table, rid, f, value in clear:
                if f == "sample_ids":
                    value = self.catalog.parse_json(value, f"request {rid}'s sample_ids")
                cur.execute(
                    f"UPDATE {table} SET {f} = ? WHERE request_id = ?",  # names from this module
                    (personal.seal(cur, rid, f, value), rid),
                )
        self.catalog.checkpoint()

    def personal_hashes(self, reason: str | None, ids: Sequence[str]) -> dict[str, str]:
        """What the ledger's ``received`` entry says of a request's personal data: the
        keyed hashes of its reason and of its (sorted) sample IDs, never the values."""
        out = {}
        if reason is not None:
            out["reason_hmac"] = self.keyed_hash("reason", reason)
        if ids:
            out["ids_hmac"] = self.keyed_hash("ids", canonical_json(sorted(map(str, ids))))
        return out

    def tombstone(self, sample_id: str) -> str:
        """How a forgotten sample is kept once its request's IDs are shredded: its keyed
        hash (the certificate's ``sample_hmacs`` entry), prefixed ``hmac:``."""
        return TOMBSTONE_PREFIX + self.keyed_hash("sample", sample_id)

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
                "FROM samples "
                "WHERE sample_id LIKE ?",
                (TOMBSTONE_PREFIX + "%",),
            )
        }
        if not hashed:
            return {}
        found = ((str(i), hashed.get(self.tombstone(str(i)))) for i in ids)
        return {i: row for i, row in found if row is not None}

    # --- retention of personal data ------------------------------------------------

    def retention(self) -> dict[str, int]:
        """Days a done request keeps its reason and its sample IDs (the workspace meta
        ``reason_retention_days`` and ``id_retention_days``; defaults 0 and 30)."""
        out = {}
        for f, (key, default) in RETENTION.items():
            value = self.catalog.meta(key)
            out[f] = int(value) if value is not None and value.isdigit() else default
        return out

    def set_retention(self, *, reason_days: int | None = None, id_days: int | None = None) -> None:
        """Keep a done request's reason ``reason_days`` and its sample IDs ``id_days``
        (whole days >= 0; ``None``: unchanged) before :meth:`shred_due` erases them."""
        given = {"reason": reason_days, "sample_ids": id_days}
        for f, days in given.items():
            if days is not None and (
                isinstance(days, bool) or not isinstance(days, int) or days < 0
            ):
                raise InvalidParameterError(
                    f"The retention of a request's {f} must be a whole number of days >= 0; "
                    f"got {days!r}."
                )
        with self.lock(), self.catalog.transaction() as cur:
            for f, days in given.items():
                if days is not None:
                    cur.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        (RETENTION[f][0], str(days)),
                    )

    def due_for_shredding(self, now: str | None = None) -> list[tuple[str, str]]:
        """(request ID, field) of each key whose retention has ended: its request is done
        (``certified``, ``rejected``, or ``failed`` for good) since longer than the field's
        retention. The clock starts at the first such entry after the request was last in
        flight (a request queued again restarts it; ``verified`` leaves it alone)."""
        now_at = datetime.fromisoformat(now or utcnow())
        days = self.retention()
        done_at: dict[tuple[str, str], str] = {}
        for r in self.catalog.query(
            "SELECT s.request_id, s.field, l.state, l.timestamp FROM request_secrets s "
            "JOIN ledger l ON l.request_id = s.request_id ORDER BY l.seq"
        ):
            key = (r["request_id"], r["field"])
            if r["state"] in SHRED_AFTER:
                done_at.setdefault(key, r["timestamp"])
            elif r["state"] != "verified":
                done_at.pop(key, None)
        return [
            key
            for key, at in sorted(done_at.items(), key=lambda kv: (kv[1], kv[0]))
            if datetime.fromisoformat(at) + timedelta(days=days.get(key[1], 0)) <= now_at
        ]

    def shred_due(self, now: str | None = None) -> dict[str, Any]:
        """Erase the personal data whose retention has ended (crypto-shredding).

        In one transaction: each due key is deleted (what it sealed then reads as erased),
        and when a request's sample IDs are due, its forgotten samples' tombstones become
        their keyed hashes (:meth:`tombstone`), which still refuse them. Then the WAL is
        folded into the file and truncated, so that no copy of a key survives in it
        (``secure_delete`` has zeroed the cleared bytes in the file). A crash before the
        commit changes nothing; one after it leaves the WAL to the next call (or the last
        connection's close), which folds it in. Returns what it did.
        """
        with self.lock():
            due = self.due_for_shredding(now)
            with self.catalog.transaction() as cur:
                for rid, f in due:
                    if f == "sample_ids":
                        rows = cur.execute(
                            "SELECT sample_id FROM samples WHERE request_id = ? AND "
                            "status = 'forgotten' AND sample_id NOT LIKE ?",
                            (rid, TOMBSTONE_PREFIX + "%"),
                        ).fetchall()
                        cur.executemany(
                            "UPDATE samples SET sample_id = ? WHERE sample_id = ?",
                            [(self.tombstone(r["sample_id"]), r["sample_id"]) for r in rows],
                        )
                    cur.execute(
                        "DELETE FROM request_secrets WHERE request_id = ? AND field = ?", (rid, f)
                    )
            complete = self.catalog.checkpoint()
        return {
            "shredded": [{"request_id": rid, "field": f} for rid, f in due],
            "wal_truncated": complete,
        }

    def keyed_hash(self, kind: str, value: str) -> str:
        """HMAC-SHA256 of ``kind:value`` under this workspace's secret (see :mod:`~.keys`)."""
        if self._secret is None:
            self._secret = load_secret(self.root)
        return keyed_hash(self._secret, kind, value)

    def subject_hmac(self, subject: str) -> str:
        """How requests, the ledger and certificates name ``subject``."""
        return self.keyed_hash("subject", subject)

    # --- data ----------------------------------------------------------------------

    @property
    def dataset_spec(self) -> dict[str, Any]:
        spec = self.catalog.parse_json(self.catalog.meta("dataset") or "{}", "the dataset spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise self.catalog.damaged(
                f"the dataset spec {spec!r:.60} is not an object with a dataset name"
            )
        return spec

    def dataset(self) -> Dataset:
        """The workspace's dataset, reloaded from its source and checked against the catalog."""
        if self._dataset is None:
            spec = dict(self.dataset_spec)
            name = spec.pop("name", None)
            if name == MEMORY or name is None:
                raise WorkspaceError(
                    f"Workspace {self.root} was created from data defined in Python, which "
                    f"is not loaded; reopen it with Workspace.open({str(self.root)!r}, "
                    "dataset=<the same Dataset>), which checks that it is the same data "
                    "(the per-sample content hashes recorded at creation)."
                )
            try:
                self._dataset = load_dataset(name, **recorded_options(DATASETS.get(name), spec))
            except (InvalidParameterError, UnknownNameError) as exc:  # what it names is wrong
                raise self.catalog.damaged(f"the dataset spec does not load ({exc})") from None
        return self._dataset

    def active_and_forgotten(self) -> tuple[Samples, Samples]:
        """(active training samples, forgotten samples still present in the source).

        The source is checked against the catalog first: rows the catalog does not know,
        rows never forgotten that are missing, rows that changed split or content are
        errors. Rows that were forgotten may be missing (deleted from the source): that
        is normal and silent.
        """
        ds = self.dataset()
        known = {
            r["sample_id"]: r
            for r in self.catalog.query(
                "SELECT sample_id, split, status, content_hash FROM samples"
            )
        }
        source = {str(sid): split for split, samples in ds.splits().items() for sid in samples.ids}
        unknown = [i for i in source if i not in known]
        if unknown:  # forgotten rows still in the source whose tombstone is a keyed hash
            known.update(self.tombstoned(unknown))
            unknown = [i for i in unknown if i not in known]
        if unknown:
            raise DatasetError(
                f"The dataset source has {len(unknown)} samples the catalog does not know "
                f"(e.g. {unknown[:3]}); the source gained rows since the workspace was created: "
                "remove them, or start a new workspace for the new data."
            )
        missing = sorted(i for i, r in known.items() if r["status"] == "active" and i not in source)
        if missing:
            raise DatasetError(
                f"{len(missing)} samples that were never forgotten are missing from the dataset "
                f"source (e.g. {missing[:3]}); restore them, or forget them first (only "
                "forgotten rows may be deleted from the source)."
            )
        moved = [i for i, split in source.items() if known[i]["split"] != split]
        if moved:
            raise IntegrityError(
                f"{len(moved)} samples moved to another split since the workspace was created "
                f"(e.g. {moved[:3]}); the split options or subjects changed: restore them or "
                "start a new workspace."
            )
        changed = [
            sid
            for samples in ds.splits().values()
            for sid, h in zip(samples.ids, content_hashes(samples), strict=True)
            if known[sid]["status"] == "active" and known[sid]["content_hash"] != h
        ]
        if changed:
            raise IntegrityError(
                f"{len(changed)} samples changed in the dataset source since they were recorded "
                f"(e.g. {changed[:3]}); restore the original data or start a new workspace "
                "(without an ID column, IDs are row numbers: deleting a row renumbers the rest)."
            )
        active_mask = np.array([known[i]["status"] == "active" for i in ds.train.ids], dtype=bool)
        return ds.train.subset(active_mask), ds.train.subset(~active_mask)

    def held_out(self, *, without: Sequence[str] = ()) -> tuple[Samples, Samples]:
        """(validation, test) rows not forgotten, nor in ``without``.

        A deletion request also forgets the held-out rows it selects, and no metric
        reads them afterwards: the validation and test sets shrink, and the source may
        then lose those rows. Call :meth:`active_and_forgotten` first to check the source.
        """
        ds = self.dataset()
        gone = [
            r["sample_id"]
            for r in self.catalog.query(
                "SELECT sample_id FROM samples WHERE status = 'forgotten' AND split != 'train'"
            )
        ]
        if any(g.startswith(TOMBSTONE_PREFIX) for g in gone):
            gone += self.tombstoned([*map(str, ds.val.ids), *map(str, ds.test.ids)])
        gone += list(without)
        return ds.val.subset(~ds.val.mask_of(gone)), ds.test.subset(~ds.test.mask_of(gone))

    def select(self, selector: ForgetSelector, *, active: Samples | None = None) -> list[str]:
        """Resolve a selector to sample IDs, rejecting empty, unknown and forgotten ones.

        The IDs may lie in any split: training rows are unlearned, while validation and
        test rows (never trained on) are only marked forgotten, so that no metric reads
        them again. A class selects its rows in every split.
        """
        known = {
            r["sample_id"]: (r["split"], r["status"])
            for r in self.catalog.query("SELECT sample_id, split, status FROM samples")
        }
        chosen: list[str] = []
        if selector.ids:
            shredded = self.tombstoned([i for i in selector.ids if i not in known])
            known.update({i: (r["split"], r["status"]) for i, r in shredded.items()})
            unknown = [i for i in selector.ids if i not in known]
            if unknown:
                raise UnknownSampleError(
                    f"Unknown sample IDs {unknown[:5]}{' …' if len(unknown) > 5 else ''} "
                    f"({len(unknown)} in all); list valid IDs with `unbake samples`."
                )
            gone = [i for i in selector.ids if known[i][1] == "forgotten"]
            if gone:
                raise UnknownSampleError(
                    f"Sample IDs {gone[:5]} were already forgotten; drop them from the request "
                    "(see `unbake log`)."
                )
            chosen += list(dict.fromkeys(selector.ids))
        if selector.subject is not None:
            chosen += self.subject_ids(selector.subject)
        if selector.label is not None:
            if active is None:
                active, _ = self.active_and_forgotten()
            index = self.dataset().class_index(selector.label)
            for samples in (active, *self.held_out()):
                chosen += [str(i) for i in samples.ids[samples.y == index]]
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            raise EmptyRequestError(
                "The deletion request selects no samples; pass --ids, --ids-file, --subject "
                "or --class."
            )
        return chosen

    def subject_sample_ids(self, subject: str) -> list[str]:
        """The active IDs of ``subject``, in every split; none when it has no samples or
        all were forgotten (forgotten rows keep no subject, so the two look the same)."""
        rows = self.catalog.query(
            "SELECT sample_id FROM samples WHERE subject = ? ORDER BY row", (subject,)
        )
        return [r["sample_id"] for r in rows]

    def subject_ids(self, subject: str) -> list[str]:
        """:meth:`subject_sample_ids`, refusing a subject with none (for the operator's
        synchronous ``unbake forget``, which says which of the two it is)."""
        ids = self.subject_sample_ids(subject)
        if not ids:
            done = self._requests_naming(subject)
            if done:
                raise UnknownSampleError(
                    f"Every sample of subject {subject!r} was already forgotten "
                    f"(request {done[-1]['request_id']}); see `unbake log`."
                )
            raise UnknownSampleError(
                f"No samples belong to subject {subject!r}; check the subject ID "
                "(`unbake samples` lists them)."
            )
        return ids

    def _requests_naming(self, subject: str) -> list[dict[str, Any]]:
        digest = self.subject_hmac(subject)
        return [r for r in self.catalog.requests() if r["selector"].get("subject_hmac") == digest]

    # --- models --------------------------------------------------------------------

    def model_row(self, model_id: str | None):
        """The catalog row of ``model_id`` (``None``: the newest active model); a missing or
        purged model is refused with the fix."""
        row = self.catalog.model(model_id) if model_id else self.catalog.latest_active_model()
        if row is None:
            if model_id:
                raise WorkspaceError(
                    f"No model {model_id!r} in this workspace; list models with `unbake status`."
                )
            raise WorkspaceError("No model in this workspace yet; train one with `unbake train`.")
        if row["status"] != "active":
            raise WorkspaceError(
                f"Model {row['model_id']} was purged after a deletion request; use the newest "
                "model (`unbake status`)."
            )
        return row

    def load_model(self, model_id: str | None = None, *, device=None) -> TrainedModel:
        """Load and hash-check a model (default: the newest active one)."""
        row = self.model_row(model_id)
        source = f"Checkpoint {self.root / row['checkpoint']} of model {row['model_id']}"
        data = self.read_checkpoint(row["model_id"], row, source)
        model, _ = decode_checkpoint(data, expected_sha256=None, source=source)
        if device is not None:
            model.module.to(resolve_device(device))
        return model

    def checkpoint_mac(self, ident: str, sha256: str) -> str:
        """The keyed digest of checkpoint ``ident`` (a model or reference ID) whose bytes
        have ``sha256``: HMAC-SHA256 under the workspace secret, so that whoever can
        rewrite the catalog cannot forge it for another file (or move it to another ID)."""
        return self.keyed_hash("checkpoint", f"{ident}:{sha256}")

    def read_checkpoint(self, ident: str, row, source: str) -> bytes:
        """The bytes of ``row``'s checkpoint, once they match its sha256 and keyed digest."""
        try:
            data = (self.root / row["checkpoint"]).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{source} is missing; restore it or retrain.") from None
        digest = sha256_bytes(data)
        if row["mac"] is None:
            raise IntegrityError(
                f"{source} has no keyed digest (its file did not match its recorded sha256 "
                "when the workspace was upgraded); restore it from a backup or retrain."
            )
        if digest != row["sha256"] or not hmac.compare_digest(
            self.checkpoint_mac(ident, digest), row["mac"]
        ):
            raise IntegrityError(
                f"{source} does not match the sha256 and keyed digest recorded in the catalog "
                "(corrupt or tampered); restore it from a backup or retrain the model."
            )
        return data

    def _write_model(
        self, model: TrainedModel, model_id: str, parent: str | None
    ) -> tuple[str, str]:
        data = encode_checkpoint(model, model_id=model_id, parent_id=parent)
        rel = f"{CHECKPOINTS}/{model_id}.safetensors"
        atomic_write_bytes(self.root / rel, data, mode=PRIVATE)
        return rel, sha256_bytes(data)

    def _insert_model(
        self, cur, model: TrainedModel, model_id, parent, origin, rel, digest, n_train
    ):
        cur.execute(
            "INSERT INTO models(model_id, parent_id, created_at, origin, description, strategy, "
            "spec, config, seed, n_train, checkpoint, sha256, status, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)",
            (
                model_id,
                parent,
                utcnow(),
                origin,
                model.describe(),
                model.strategy,
                json.dumps(model.spec.to_dict(), sort_keys=True),
                model.config.model_dump_json(),
                model.seed,
                n_train,
                rel,
                digest,
                self.checkpoint_mac(model_id, digest),
            ),
        )

    def record_trained(self, trained: TrainedModel, active: Samples) -> str:
        """Write ``trained`` (fitted on ``active``) and record it in one transaction (under
        the caller's lock); returns its new model ID."""
        model_id = new_id("model")
        rel, digest = self._write_model(trained, model_id, None)
        try:
            with self.catalog.transaction() as cur:
                self._insert_model(cur, trained, model_id, None, "train", rel, digest, len(active))
        except BaseException:
            (self.root / rel).unlink(missing_ok=True)
            raise
        return model_id

    def class_name(self, label: str | int) -> str:
        """The name of class ``label`` (a name or an index); an unknown one is refused."""
        ds = self.dataset()
        return ds.classes[ds.class_index(label)]

    def request_fingerprint(
        self, key: str, ids: list[str], selector: dict[str, Any], method, params, model_id
    ) -> tuple[str, str]:
        """(keyed hash of an idempotency key, keyed hash of what the request asks)."""
        canonical = ledger.canonical_json([ids, selector, method, params or {}, model_id])
        return self.keyed_hash("idempotency", key), self.keyed_hash("request", canonical)

    def commit_staged(
        self,
        staged: StagedApply,
        *,
        info: dict[str, Any] | None = None,
        applied: dict[str, Any] | None = None,
        on_commit: Callable[[Any], None] | None = None,
    ) -> ApplyOutcome:
        """Record a staged run (the second half of :func:`unbake.service.apply.apply_parts`):
        write the staged model's checkpoint,
        commit the one transaction (the model, the purge, each part's record and
        ``on_commit(cur)``), then delete the stale files. ``info`` is added to each
        record's info and ``applied`` to each ``applied`` ledger entry's payload."""
        parts, row, result = staged.parts, staged.row, staged.result
        if result is None:
            return self._forget_held_out_only(parts, staged.model_id, on_commit, info, applied)
        result.info.update(info or {})
        tickets = [p.ticket for p in parts]
        model_after = new_id("model")
        with self.failure_recorded(tickets, row, staged.unlearner.name):
            rel, digest = self._write_model(result.model, model_after, row["model_id"])
        outcome = ApplyOutcome(
            row["model_id"], model_after, staged.unlearner.name, result, staged.evaluation
        )
        try:
            stale = self._commit_forget(
                parts,
                staged.unlearner,
                row,
                model_after,
                rel,
                digest,
                result,
                staged.evaluation,
                staged.n_retain,
                staged.provenance,
                on_commit,
                applied,
            )
        except BaseException:
            (self.root / rel).unlink(missing_ok=True)
            raise
        for path in stale:
            (self.root / path).unlink(missing_ok=True)
        self.catalog.checkpoint()  # no old copy of a cleared row stays in the WAL
        return outcome

    def idempotent(self, ticket: Ticket) -> RequestRecord | None:
        """The record of the request filed under ``ticket``'s key, if it was applied.

        A key reused for another request is refused; a key whose request failed lends
        its request ID to ``ticket``, so that the retry continues the same request.
        """
        rows = self.catalog.query(
            "SELECT request_id, fingerprint FROM request_keys WHERE idempotency_key = ?",
            (ticket.key_hash,),
        )
        if not rows:
            return None
        if rows[0]["fingerprint"] != ticket.fingerprint:
            raise InvalidParameterError(
                "This idempotency key was already used for another request "
                f"({rows[0]['request_id']}); use a new key for a new request."
            )
        ticket.request_id = rows[0]["request_id"]
        return self.request_record(ticket.request_id) if self._applied(ticket.request_id) else None

    def _applied(self, request_id: str) -> bool:
        return self.catalog.request_state(request_id) in ledger.DONE

    def request_record(self, request_id: str) -> RequestRecord:
        """The :class:`RequestRecord` of an applied request, from the catalog."""
        rows = [r for r in self.catalog.requests() if r["request_id"] == request_id]
        if not rows:
            raise UnknownNameError(
                f"No applied deletion request {request_id!r} in this workspace; list them with "
                "`unbake log`."
            )
        r = rows[0]
        return RequestRecord(
            request_id,
            r["model_before"],
            r["model_after"],
            r["method"],
            r["n_samples"],
            r["seconds"] or 0.0,
            Evaluation(r["metrics"]) if r["metrics"] else None,
            None,
            int((r["info"] or {}).get("held_out", 0)),
        )

    def _ledger_start(self, cur, ticket: Ticket, method: str, model_before: str) -> None:
        """Append ``received`` (unless a retry or already queued) and ``applying`` (unless
        the worker already did) for ``ticket``."""
        state = ledger.last_state(cur, ticket.request_id)
        if state is None:
            payload = {
                "selector": ticket.selector,
                "deadline": self.deadline_for(ticket.received_at),
                **ticket.personal,
            }
            ledger.append_entry(cur, ticket.request_id, "received", payload, ticket.received_at)
            if ticket.key_hash is not None:
                cur.execute(
                    "INSERT INTO request_keys(idempotency_key, request_id, fingerprint) "
                    "VALUES (?, ?, ?)",
                    (ticket.key_hash, ticket.request_id, ticket.fingerprint),
                )
        if state != "applying":
            payload = {"method": method, "model_before": model_before}
            ledger.append_entry(cur, ticket.request_id, "applying", payload, ticket.started_at)

    @contextlib.contextmanager
    def failure_recorded(self, tickets: Sequence[Ticket], row, method: str) -> Iterator[None]:
        """Record an unexpected failure of the block; an :class:`UnbakeError` (a request
        refused as invalid) leaves no trace, as for any bad input."""
        try:
            yield
        except UnbakeError:
            raise
        except Exception as exc:
            self.record_failure(tickets, row["model_id"] if row else "", method, exc)
            raise

    def record_failure(
        self,
        tickets: Sequence[Ticket],
        model_before: str,
        method: str,
        exc: BaseException,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record ``[received →] applying → failed`` for each ticket, in one transaction;
        ``details`` join the reason in the ``failed`` entry's payload.

        If even that cannot be written (a full disk), the original error is the one
        reported, and the request is simply not in the ledger (or still ``applying``,
        which the worker's recovery puts back in the queue).
        """
        reason = failure_reason(exc, self.root)
        with contextlib.suppress(UnbakeError, OSError), self.catalog.transaction() as cur:
            for ticket in tickets:
                self._ledger_start(cur, ticket, method, model_before)
                payload = {"reason": reason, **(details or {})}
                ledger.append_entry(cur, ticket.request_id, "failed", payload, utcnow())

    def overdue(self, now: str | None = None) -> list[dict[str, Any]]:
        """Requests not yet applied (nor rejected) whose deadline has passed, oldest first.

        A failed request stays open: it still has to be done.
        """
        now = now or utcnow()
        rows = self.catalog.query(
            "SELECT r.request_id, r.timestamp AS received_at, r.payload, "
            "(SELECT state FROM ledger l WHERE l.request_id = r.request_id "
            " ORDER BY seq DESC LIMIT 1) AS state "
            "FROM ledger r WHERE r.state = 'received' ORDER BY r.seq"
        )
        out = []
        for r in rows:
            payload = self.catalog.parse_json(r["payload"], f"ledger entry of {r['request_id']}")
            if r["state"] not in (*ledger.DONE, "rejected") and payload["deadline"] < now:
                out.append(
                    {
                        "request_id": r["request_id"],
                        "state": r["state"],
                        "received_at": r["received_at"],
                        "deadline": payload["deadline"],
                    }
                )
        return out

    def attention(
        self, *, stuck_after: float = STUCK_AFTER, now: datetime | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """The requests an operator must look at, oldest first: ``stuck`` (applying for
        more than ``stuck_after`` seconds: its worker hangs or is gone), ``failed`` (its
        retries spent, with the reason) and ``overdue`` (:meth:`overdue`)."""
        now = now or datetime.now(timezone.utc)
        stuck, failed = [], []
        for r in self.catalog.query(
            "SELECT request_id, state, timestamp, payload FROM ledger WHERE seq IN "
            "(SELECT MAX(seq) FROM ledger GROUP BY request_id) "
            "AND state IN ('applying', 'failed') ORDER BY seq"
        ):
            if r["state"] == "failed":
                payload = self.catalog.parse_json(
                    r["payload"], f"ledger entry of {r['request_id']}"
                )
                failed.append(
                    {
                        "request_id": r["request_id"],
                        "at": r["timestamp"],
                        "reason": payload.get("reason"),
                    }
                )
                continue
            seconds = (now - datetime.fromisoformat(r["timestamp"])).total_seconds()
            if seconds > stuck_after:
                stuck.append(
                    {
                        "request_id": r["request_id"],
                        "since": r["timestamp"],
                        "seconds": round(seconds, 3),
                    }
                )
        overdue = self.overdue(now.isoformat(timespec="microseconds"))
        return {"stuck": stuck, "failed": failed, "overdue": overdue}

    def deadline_for(self, received_at: str, days: int | None = None) -> str:
        """When a request received at ``received_at`` must be done (GDPR art. 12(3)).

        ``days`` if given (a policy's ``deadline_days``); else the workspace meta
        ``deadline_days``; else one calendar month.
        """
        if days is None:
            days = self.catalog.meta("deadline_days")
        return ledger.deadline(datetime.fromisoformat(received_at), days)

    def set_deadline_days(self, days: int | None) -> None:
        """Give requests filed from now on ``days`` to be done (``None``: one month)."""
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
            raise InvalidParameterError(
                f"The request deadline must be a whole number of days >= 1; got {days!r}."
            )
        with self.lock(), self.catalog.transaction() as cur:
            cur.execute("DELETE FROM meta WHERE key = 'deadline_days'")
            if days is not None:
                cur.execute(
                    "INSERT INTO meta(key, value) VALUES ('deadline_days', ?)", (str(days),)
                )

    def _forget_held_out_only(
        self,
        parts: Sequence[RequestPart],
        model_id: str | None,
        on_commit=None,
        info: dict[str, Any] | None = None,
        applied: dict[str, Any] | None = None,
    ) -> ApplyOutcome:
        """Record requests that select only validation/test rows: no model changes."""
        row = self.model_row(model_id) if model_id else self.catalog.latest_active_model()
        model, digest = (row["model_id"], row["sha256"]) if row else ("", "")
        with self.catalog.transaction() as cur:
            for part in parts:
                self._record_request(
                    cur,
                    part.held_ids,
                    part.ticket,
                    request_id=part.ticket.request_id,
                    selector=json.dumps(part.ticket.selector),
                    n_samples=0,
                    sample_ids=[],
                    method="none",
                    params="{}",
                    exact=1,
                    model_before=model,
                    hash_before=digest,
                    model_after=model,
                    hash_after=digest,
                    seconds=0.0,
                    metrics=None,
                    info=json.dumps(
                        {**self._held_out_info(part.held_ids), **(info or {})}, sort_keys=True
                    ),
                    unbake_version=unbake_version(),
                    reason=part.reason,
                    submitted_by=part.submitted_by,
                    applied_extra=applied,
                )
            if on_commit is not None:
                on_commit(cur)
        self.catalog.checkpoint()
        return ApplyOutcome(model, model, "none", None, None)

    def _held_out_info(self, held_ids: list[str]) -> dict[str, Any]:
        """How many rows of each held-out split a request marks forgotten."""
        splits = {
            r["sample_id"]: r["split"]
            for r in self.catalog.query(
                "SELECT sample_id, split FROM samples WHERE split != 'train'"
            )
        }
        counts = {split: sum(splits[i] == split for i in held_ids) for split in SPLITS[1:]}
        return {"held_out": len(held_ids), "held_out_splits": counts}

    def _record_request(
        self,
        cur,
        forgotten: Sequence[str],
        ticket: Ticket,
        *,
        applied_extra: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        """Insert one applied request, append its ledger entries up to ``applied`` (its
        payload plus ``applied_extra``), and mark ``forgotten`` (train and held-out IDs)
        as forgotten by it: their content hash and subject are cleared. The reason and the
        sample IDs are stored sealed (:mod:`~unbake.workspace.personal`)."""
        now = utcnow()
        rid = values["request_id"]
        values["sample_ids"] = personal.seal(cur, rid, "sample_ids", values["sample_ids"])
        if values.get("reason") is not None:
            values["reason"] = personal.seal(cur, rid, "reason", values["reason"])
        self._ledger_start(cur, ticket, values["method"], values["model_before"])
        applied = {
            "model_after": values["model_after"],
            "hash_after": values["hash_after"],
            "n_samples": values["n_samples"],
            "n_held_out": len(forgotten) - values["n_samples"],
            **(applied_extra or {}),
        }
        ledger.append_entry(cur, ticket.request_id, "applied", applied, now)
        columns = ", ".join(values)  # column names from this module, never user input
        marks = ", ".join("?" for _ in values)
        cur.execute(
            f"INSERT INTO requests(created_at, {columns}, status) VALUES (?, {marks}, 'applied')",
            (now, *values.values()),
        )
        cur.executemany(
            "UPDATE samples SET status='forgotten', content_hash=NULL, subject=NULL, "
            "request_id=?, forgotten_at=? WHERE sample_id=?",
            [(values["request_id"], now, sid) for sid in forgotten],
        )

    def _commit_forget(
        self,
        parts: Sequence[RequestPart],
        unlearner,
        row,
        new_id,
        rel,
        digest,
        result,
        evaluation,
        n_retain,
        provenance,
        on_commit=None,
        applied=None,
    ) -> list[str]:
        sample_ids = [i for p in parts for i in p.sample_ids]
        with self.catalog.transaction() as cur:
            self._insert_model(
                cur, result.model, new_id, row["model_id"], "forget", rel, digest, n_retain
            )
            purged_refs, ref_files = _purge_references(cur, sample_ids, parts[0].ticket.request_id)
            result.info["purged_references"] = purged_refs
            for part in parts:
                info = dict(result.info)
                if part.held_ids:
                    info.update(self._held_out_info(list(part.held_ids)))
                self._record_request(
                    cur,
                    [*part.sample_ids, *part.held_ids],
                    part.ticket,
                    request_id=part.ticket.request_id,
                    selector=json.dumps(part.ticket.selector),
                    n_samples=len(part.sample_ids),
                    sample_ids=list(part.sample_ids),
                    method=unlearner.name,
                    params=json.dumps(result.params, sort_keys=True, default=str),
                    exact=int(unlearner.exact),
                    model_before=row["model_id"],
                    hash_before=row["sha256"],
                    model_after=new_id,
                    hash_after=digest,
                    seconds=result.seconds,
                    metrics=json.dumps(evaluation.to_dict()),
                    info=json.dumps(info, sort_keys=True, default=str),
                    **provenance,
                    reason=part.reason,
                    submitted_by=part.submitted_by,
                    applied_extra=applied,
                )
            stale = [
                r["checkpoint"]
                for r in cur.execute(
                    "SELECT checkpoint FROM models WHERE status='active' AND model_id != ?",
                    (new_id,),
                ).fetchall()
            ]
            cur.execute(
                "UPDATE models SET status='purged' WHERE status='active' AND model_id != ?",
                (new_id,),
            )
            if on_commit is not None:
                on_commit(cur)
        return stale + ref_files

    # --- reading -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts (active training samples, forgotten rows of every split, active rows per split),
        subjects, models, and the requests to look at (:meth:`attention`)."""
        counts = {
            (r["split"], r["status"]): r["n"]
            for r in self.catalog.query(
                "SELECT split, status, COUNT(*) AS n FROM samples GROUP BY split, status"
            )
        }
        attention = self.attention()
        return {
            "workspace": str(self.root),
            "dataset": self.dataset_spec,
            "samples": {
                "active": counts.get(("train", "active"), 0),
                "forgotten": sum(n for (_, st), n in counts.items() if st == "forgotten"),
            },
            "splits": {split: counts.get((split, "active"), 0) for split in SPLITS},
            "subjects": self.catalog.query(
                "SELECT COUNT(DISTINCT subject) AS n FROM samples WHERE status='active' AND subject IS NOT NULL"
            )[0]["n"],
            "models": self.catalog.models(),
            "overdue_requests": attention["overdue"],
            "stuck_requests": attention["stuck"],
            "failed_requests": attention["failed"],
        }

    def samples(self, *, subject: str | None = None, forgotten: bool = False) -> list[dict]:
        """The samples the catalog knows: ID, subject, split, label name, status.

        By default the samples not forgotten (every split); ``forgotten=True`` lists the
        forgotten ones instead, with their request (their subject is cleared when they
        are forgotten, so ``subject`` then finds them through the requests that named it;
        once a request's IDs are shredded, its samples are listed by their tombstone,
        ``hmac:`` + keyed hash).
        Label names are read from the source; a forgotten row deleted from it has none.
        """
        self.active_and_forgotten()  # checks the source against the catalog first
        ds = self.dataset()
        label_of = {
            str(sid): name
            for samples in ds.splits().values()
            for sid, name in zip(
                samples.ids,
                ds.label_names(samples.y) if ds.n_classes else [""] * len(samples),  # text: none
                strict=True,
            )
        }
        status = "forgotten" if forgotten else "active"
        if subject is not None and forgotten:
            wanted = {r["request_id"] for r in self._requests_naming(subject)}
            rows = [
                r
                for r in self.catalog.query(
                    "SELECT * FROM samples WHERE status = ? ORDER BY row", (status,)
                )
                if r["request_id"] in wanted
            ]
        elif subject is not None:
            rows = self.catalog.query(
                "SELECT * FROM samples WHERE status = ? AND subject = ? ORDER BY row",
                (status, subject),
            )
        else:
            rows = self.catalog.query(
                "SELECT * FROM samples WHERE status = ? ORDER BY row", (status,)
            )
        return [
            {
                "sample_id": r["sample_id"],
                "subject": r["subject"],
                "split": r["split"],
                "label": label_of.get(r["sample_id"]),
                "status": r["status"],
                "request_id": r["request_id"],
            }
            for r in rows
        ]

    def log(self) -> list[dict[str, Any]]:
        return self.catalog.requests()

    def ledger(self, *, request_id: str | None = None) -> list[dict[str, Any]]:
        """The ledger's entries, oldest first (only ``request_id``'s if given)."""
        entries = self.catalog.request_entries(request_id)
        if request_id is not None and not entries:
            raise UnknownNameError(
                f"No request {request_id!r} in this workspace's ledger; list them with "
                "`unbake ledger show`."
            )
        return entries
