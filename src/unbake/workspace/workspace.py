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
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from unbake._version import __version__
from unbake.data import (
    DATASETS,
    SPLITS,
    Dataset,
    Samples,
    as_dataset,
    content_hashes,
    load_dataset,
)
from unbake.evaluation import Evaluation
from unbake.exceptions import (
    DatasetError,
    InvalidParameterError,
    UnbakeError,
    UnknownNameError,
    WorkspaceError,
)
from unbake.methods import UnlearnResult
from unbake.training import TrainedModel
from unbake.workspace.atomic import PRIVATE, PRIVATE_DIR, TMP_SUFFIX
from unbake.workspace.catalog import Catalog, utcnow
from unbake.workspace.keys import SECRET, create_secret, keyed_hash, load_secret
from unbake.workspace.model_store import CHECKPOINTS, ModelStore, new_id
from unbake.workspace.references import purge_references
from unbake.workspace.reopen import check_same_data, memory_spec
from unbake.workspace.request_store import (
    RETENTION,
    STUCK_AFTER,
    RequestPart,
    RequestRecord,
    RequestStore,
    Ticket,
    failure_reason,
)
from unbake.workspace.sample_store import TOMBSTONE_PREFIX, SampleStore
from unbake.workspace.source import ForgetSelector, SourceView

__all__ = [
    "DEFAULT_WORKSPACE",
    "STUCK_AFTER",
    "TOMBSTONE_PREFIX",
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
CATALOG = "catalog.sqlite"


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
    ``result`` and ``evaluation`` are ``None`` when the parts name only held-out rows.
    ``method`` and ``exact`` are the unlearner's name and tag; ``row`` the model's row."""

    parts: list[RequestPart]
    method: str
    exact: bool
    model_id: str | None
    row: sqlite3.Row | None
    result: UnlearnResult | None
    evaluation: Evaluation | None
    n_retain: int
    provenance: dict[str, Any]


def unbake_version() -> str:
    return __version__


def _duplicates(values: list[str]) -> list[str]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


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


class Workspace(SourceView):
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
        #: The stores, each owning its tables' SQL.
        self.sample_store = SampleStore(catalog, self.keyed_hash)
        self.model_store = ModelStore(root, catalog, self.keyed_hash)
        self.request_store = RequestStore(catalog, self.keyed_hash)

    # --- opening -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | os.PathLike = DEFAULT_WORKSPACE,
        *,
        dataset: str | Dataset | Any = "digits",
        dataset_options: dict[str, Any] | None = None,
    ) -> Workspace:
        """Create a new workspace for ``dataset``; the folder must not hold one already.

        The dataset is loaded and checked before anything is written. Besides a
        registered name or a :class:`Dataset`, ``dataset`` may be the user's own data (a
        torch ``Dataset``, a ``datasets.Dataset``, :class:`Samples`): it is split by
        :func:`unbake.data.as_dataset`, into index views over it.
        """
        root = check_workspace_path(root)
        if (root / CATALOG).exists():
            raise WorkspaceError(
                f"{root} already holds a workspace; open it, or pick another --workspace."
            )
        if not isinstance(dataset, str):  # a torch Dataset, datasets.Dataset, (X, y): split
            dataset = as_dataset(dataset)
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
                SampleStore.insert(cur, rows)
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
                        ws.model_store.key_checkpoints()
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
        live = self.model_store.live_checkpoints()
        for path in (self.root / CHECKPOINTS).glob("*"):
            rel = f"{CHECKPOINTS}/{path.name}"
            if path.name.endswith(TMP_SUFFIX) or rel not in live:
                path.unlink(missing_ok=True)

    def _upgrade_records(self) -> None:
        """Bring a workspace from before the ledger up to date (idempotent).

        It gets its secret; its requests are backfilled into the ledger
        (:meth:`RequestStore.backfill`); reasons and sample IDs stored in the clear
        (before v9) are sealed (:mod:`~unbake.workspace.personal`); the ledger entries of
        those requests keep theirs, since rewriting them would break the chain.
        """
        if not (self.root / SECRET).exists():
            create_secret(self.root)
        self.request_store.seal_clear_records()
        self.request_store.backfill(self.subject_hmac)

    def keyed_hash(self, kind: str, value: str) -> str:
        """HMAC-SHA256 of ``kind:value`` under this workspace's secret (see :mod:`~.keys`)."""
        if self._secret is None:
            self._secret = load_secret(self.root)
        return keyed_hash(self._secret, kind, value)

    def subject_hmac(self, subject: str) -> str:
        """How requests, the ledger and certificates name ``subject``."""
        return self.keyed_hash("subject", subject)

    # --- retention of personal data ------------------------------------------------

    def retention(self) -> dict[str, int]:
        """Days a done request keeps its reason and its sample IDs (the workspace meta
        ``reason_retention_days`` and ``id_retention_days``; defaults 0 and 30)."""
        return self.request_store.retention()

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
                    self.request_store.set_meta(cur, RETENTION[f][0], str(days))

    def shred_due(self, now: str | None = None) -> dict[str, Any]:
        """Erase the personal data whose retention has ended (crypto-shredding).

        In one transaction: each due key is deleted (what it sealed then reads as erased),
        and when a request's sample IDs are due, its forgotten samples' tombstones become
        their keyed hashes (:meth:`SampleStore.tombstone`), which still refuse them. Then
        the WAL is folded into the file and truncated, so that no copy of a key survives
        in it (``secure_delete`` has zeroed the cleared bytes in the file). A crash before
        the commit changes nothing; one after it leaves the WAL to the next call (or the
        last connection's close), which folds it in. Returns what it did.
        """
        with self.lock():
            due = self.request_store.due_for_shredding(now)
            with self.catalog.transaction() as cur:
                for rid, f in due:
                    if f == "sample_ids":
                        self.sample_store.shred_ids(cur, rid)
                    self.request_store.destroy_key(cur, rid, f)
            complete = self.catalog.checkpoint()
        return {
            "shredded": [{"request_id": rid, "field": f} for rid, f in due],
            "wal_truncated": complete,
        }

    # --- models --------------------------------------------------------------------

    def model_row(self, model_id: str | None) -> sqlite3.Row:
        """The catalog row of ``model_id`` (``None``: the newest active model); a missing or
        purged model is refused with the fix (:meth:`ModelStore.row`)."""
        return self.model_store.row(model_id)

    def load_model(self, model_id: str | None = None, *, device: Any = None) -> TrainedModel:
        """Load and hash-check a model (default: the newest active one)."""
        return self.model_store.load(model_id, device=device)

    def record_trained(self, trained: TrainedModel, active: Samples) -> str:
        """Write ``trained`` (fitted on ``active``) and record it in one transaction (under
        the caller's lock); returns its new model ID."""
        return self.model_store.record_trained(trained, len(active))

    # --- recording a request (the single commit point) ------------------------------

    def commit_staged(
        self,
        staged: StagedApply,
        *,
        info: dict[str, Any] | None = None,
        applied: dict[str, Any] | None = None,
        on_commit: Callable[[sqlite3.Cursor], None] | None = None,
    ) -> ApplyOutcome:
        """Record a staged run (the second half of :func:`unbake.service.apply.apply_parts`):
        write the staged model's checkpoint, commit the one transaction (the model, the
        purge of every model and reference that saw the data, each part's record and
        ``on_commit(cur)``), then delete the stale files. ``info`` is added to each
        record's info and ``applied`` to each ``applied`` ledger entry's payload."""
        parts, row, result = staged.parts, staged.row, staged.result
        if result is None or row is None:
            return self._forget_held_out_only(parts, staged.model_id, on_commit, info, applied)
        result.info.update(info or {})
        tickets = [p.ticket for p in parts]
        model_after = new_id("model")
        with self.failure_recorded(tickets, row, staged.method):
            checkpoint = self.model_store.write(result.model, model_after, row["model_id"])
        outcome = ApplyOutcome(
            row["model_id"], model_after, staged.method, result, staged.evaluation
        )
        try:
            stale = self._commit_forget(staged, model_after, checkpoint, on_commit, applied)
        except BaseException:
            (self.root / checkpoint[0]).unlink(missing_ok=True)
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
        if ticket.key_hash is None:
            return None
        known = self.request_store.known_key(ticket.key_hash, ticket.fingerprint)
        if known is None:
            return None
        ticket.request_id, ticket.state = known.request_id, known.state
        if known.state in ("applied", "verified", "certified"):
            return self.request_store.record(known.request_id)
        return None

    @contextlib.contextmanager
    def failure_recorded(
        self, tickets: Sequence[Ticket], row: sqlite3.Row | None, method: str
    ) -> Iterator[None]:
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
        store = self.request_store
        with contextlib.suppress(UnbakeError, OSError), self.catalog.transaction() as cur:
            for ticket in tickets:
                store.start(cur, ticket, method, model_before)
                payload = {"reason": reason, **(details or {})}
                store.append(cur, ticket.request_id, "failed", payload, utcnow())

    def attention(
        self, *, stuck_after: float = STUCK_AFTER, now: datetime | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """The requests an operator must look at (:meth:`RequestStore.attention`)."""
        return self.request_store.attention(stuck_after=stuck_after, now=now)

    def set_deadline_days(self, days: int | None) -> None:
        """Give requests filed from now on ``days`` to be done (``None``: one month)."""
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
            raise InvalidParameterError(
                f"The request deadline must be a whole number of days >= 1; got {days!r}."
            )
        with self.lock(), self.catalog.transaction() as cur:
            self.request_store.set_meta(cur, "deadline_days", None if days is None else str(days))

    def _forget_held_out_only(
        self,
        parts: Sequence[RequestPart],
        model_id: str | None,
        on_commit: Callable[[sqlite3.Cursor], None] | None = None,
        info: dict[str, Any] | None = None,
        applied: dict[str, Any] | None = None,
    ) -> ApplyOutcome:
        """Record requests that select only validation/test rows: no model changes."""
        row = self.model_row(model_id) if model_id else self.model_store.current()
        model, digest = (row["model_id"], row["sha256"]) if row else ("", "")
        with self.catalog.transaction() as cur:
            for part in parts:
                held = {**self.sample_store.held_out_info(part.held_ids), **(info or {})}
                values = {
                    **self._request_values(part),
                    "n_samples": 0,
                    "sample_ids": [],
                    "method": "none",
                    "params": "{}",
                    "exact": 1,
                    "model_before": model,
                    "hash_before": digest,
                    "model_after": model,
                    "hash_after": digest,
                    "seconds": 0.0,
                    "metrics": None,
                    "info": json.dumps(held, sort_keys=True),
                    "unbake_version": unbake_version(),
                }
                self.request_store.record_applied(cur, part.held_ids, part.ticket, values, applied)
            if on_commit is not None:
                on_commit(cur)
        self.catalog.checkpoint()
        return ApplyOutcome(model, model, "none", None, None)

    @staticmethod
    def _request_values(part: RequestPart) -> dict[str, Any]:
        """The ``requests`` columns every applied request has, from its part."""
        return {
            "request_id": part.ticket.request_id,
            "selector": json.dumps(part.ticket.selector),
            "reason": part.reason,
            "submitted_by": part.submitted_by,
        }

    def _commit_forget(
        self,
        staged: StagedApply,
        model_after: str,
        checkpoint: tuple[str, str],
        on_commit: Callable[[sqlite3.Cursor], None] | None,
        applied: dict[str, Any] | None,
    ) -> list[str]:
        """The transaction of :meth:`commit_staged`; returns the files it made stale."""
        parts, row, result = staged.parts, staged.row, staged.result
        if row is None or result is None or staged.evaluation is None:  # commit_staged's
            raise RuntimeError("a staged run without a model was committed as an unlearning")
        sample_ids = [i for p in parts for i in p.sample_ids]
        with self.catalog.transaction() as cur:
            self.model_store.insert(
                cur,
                result.model,
                model_after,
                parent=row["model_id"],
                origin="forget",
                checkpoint=checkpoint,
                n_train=staged.n_retain,
            )
            purged_refs, ref_files = purge_references(cur, sample_ids, parts[0].ticket.request_id)
            result.info["purged_references"] = purged_refs
            for part in parts:
                info = dict(result.info)
                if part.held_ids:
                    info.update(self.sample_store.held_out_info(part.held_ids))
                values = {
                    **self._request_values(part),
                    "n_samples": len(part.sample_ids),
                    "sample_ids": list(part.sample_ids),
                    "method": staged.method,
                    "params": json.dumps(result.params, sort_keys=True, default=str),
                    "exact": int(staged.exact),
                    "model_before": row["model_id"],
                    "hash_before": row["sha256"],
                    "model_after": model_after,
                    "hash_after": checkpoint[1],
                    "seconds": result.seconds,
                    "metrics": json.dumps(staged.evaluation.to_dict()),
                    "info": json.dumps(info, sort_keys=True, default=str),
                    **staged.provenance,
                }
                forgotten = [*part.sample_ids, *part.held_ids]
                self.request_store.record_applied(cur, forgotten, part.ticket, values, applied)
            stale = self.model_store.purge_all_but(cur, model_after)
            if on_commit is not None:
                on_commit(cur)
        return stale + ref_files

    # --- reading -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts (active training samples, forgotten rows of every split, active rows per split),
        subjects, models, and the requests to look at (:meth:`attention`)."""
        counts = self.sample_store.counts()
        attention = self.attention()
        return {
            "workspace": str(self.root),
            "dataset": self.dataset_spec,
            "samples": {
                "active": counts.get(("train", "active"), 0),
                "forgotten": sum(n for (_, st), n in counts.items() if st == "forgotten"),
            },
            "splits": {split: counts.get((split, "active"), 0) for split in SPLITS},
            "subjects": self.sample_store.n_subjects(),
            "models": self.catalog.models(),
            "overdue_requests": attention["overdue"],
            "stuck_requests": attention["stuck"],
            "failed_requests": attention["failed"],
        }

    def log(self) -> list[dict[str, Any]]:
        return self.request_store.applied()

    def ledger(self, *, request_id: str | None = None) -> list[dict[str, Any]]:
        """The ledger's entries, oldest first (only ``request_id``'s if given)."""
        entries = self.request_store.entries(request_id)
        if request_id is not None and not entries:
            raise UnknownNameError(
                f"No request {request_id!r} in this workspace's ledger; list them with "
                "`unbake ledger show`."
            )
        return entries
