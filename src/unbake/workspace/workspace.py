"""The workspace: one folder holding the catalog and the checkpoints of one dataset's models.

Every mutating operation holds an exclusive lock on the folder, validates everything
before writing anything, writes new checkpoint files atomically, commits the catalog in
one SQLite transaction, and only then deletes what the transaction made stale. A bad
request therefore leaves the workspace exactly as it was, and a crash at any point
leaves it consistent (stale files are swept on the next open).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from unbake.data import DATASETS, Dataset, Samples, content_hashes, load_dataset
from unbake.evaluation import Evaluation, evaluate
from unbake.exceptions import (
    DatasetError,
    EmptyRequestError,
    IntegrityError,
    InvalidParameterError,
    UnknownSampleError,
    WorkspaceError,
)
from unbake.methods import METHODS, UnlearnResult, UnlearnTask
from unbake.models import ModelSpec
from unbake.training import TrainConfig, TrainedModel, fit
from unbake.workspace.atomic import TMP_SUFFIX, atomic_write_bytes, sha256_bytes
from unbake.workspace.catalog import Catalog, utcnow
from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint

__all__ = ["DEFAULT_WORKSPACE", "ForgetSelector", "RequestRecord", "Workspace"]

DEFAULT_WORKSPACE = "unbake-workspace"
CATALOG = "catalog.sqlite"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class ForgetSelector:
    """What a deletion request names: sample IDs, a subject, or a class label."""

    ids: tuple[str, ...] = ()
    subject: str | None = None
    label: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ids:
            out["ids"] = len(self.ids)
        if self.subject is not None:
            out["subject"] = self.subject
        if self.label is not None:
            out["class"] = self.label
        return out


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    model_before: str
    model_after: str
    method: str
    n_samples: int
    seconds: float
    evaluation: Evaluation
    result: UnlearnResult


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


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Workspace:
    """A workspace folder. Use :meth:`create` or :meth:`open`, and ``close`` when done.

    >>> import tempfile
    >>> from unbake.training import TrainConfig
    >>> ws = Workspace.create(tempfile.mkdtemp() + "/ws", dataset="digits")
    >>> model_id = ws.train(model="logreg", config=TrainConfig.parse(epochs=1))
    >>> rec = ws.forget(ids=["digits-0000"], method="finetune", params={"epochs": 1})
    >>> ws.status()["samples"]["forgotten"]
    1
    >>> ws.close()
    """

    def __init__(self, root: Path, catalog: Catalog) -> None:
        self.root = root
        self.catalog = catalog
        self._dataset: Dataset | None = None

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
        root = Path(root)
        if (root / CATALOG).exists():
            raise WorkspaceError(
                f"{root} already holds a workspace; open it, or pick another --workspace."
            )
        if isinstance(dataset, Dataset):
            ds = dataset
            if ds.spec.get("name") not in DATASETS:
                # In-memory data cannot be reloaded by name later; keep it on the instance.
                ds = Dataset(ds.name, ds.train, ds.test, ds.n_classes, {"name": "__memory__"})
        else:
            ds = load_dataset(dataset, **(dataset_options or {}))
        root.mkdir(parents=True, exist_ok=True)
        (root / CHECKPOINTS).mkdir(exist_ok=True)
        (root / ".lock").touch()
        catalog = Catalog(root / CATALOG)
        try:
            catalog.initialise(
                {
                    "dataset": json.dumps(ds.spec, sort_keys=True),
                    "dataset_name": ds.name,
                    "created_at": utcnow(),
                }
            )
            hashes = content_hashes(ds.train)
            with catalog.transaction() as cur:
                cur.executemany(
                    "INSERT INTO samples(row, sample_id, subject, split, content_hash, status) "
                    "VALUES (?, ?, ?, 'train', ?, 'active')",
                    [
                        (i, str(sid), str(subj) or None, h)
                        for i, (sid, subj, h) in enumerate(
                            zip(ds.train.ids, ds.train.subjects, hashes, strict=True)
                        )
                    ],
                )
        except BaseException:
            catalog.close()
            with contextlib.suppress(OSError):
                (root / CATALOG).unlink()
            raise
        ws = cls(root, catalog)
        ws._dataset = ds
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike = DEFAULT_WORKSPACE) -> Workspace:
        root = Path(root)
        if not (root / CATALOG).exists():
            raise WorkspaceError(
                f"No workspace at {root}; create one with `unbake train --workspace {root} "
                "--dataset NAME`."
            )
        catalog = Catalog(root / CATALOG)
        catalog.check_version()
        ws = cls(root, catalog)
        with ws._lock():
            ws._sweep()
        return ws

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive, cross-process lock on the workspace (fails fast if held)."""
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkspaceError(
                    f"Workspace {self.root} is busy with another unbake process; "
                    "wait for it to finish and retry."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove temp files and checkpoints the catalog no longer references."""
        live = {
            r["checkpoint"]
            for table in ("models", "reference_models")
            for r in self.catalog.query(f"SELECT checkpoint FROM {table} WHERE status='active'")
        }
        for path in (self.root / CHECKPOINTS).glob("*"):
            rel = f"{CHECKPOINTS}/{path.name}"
            if path.name.endswith(TMP_SUFFIX) or rel not in live:
                path.unlink(missing_ok=True)

    # --- data ----------------------------------------------------------------------

    @property
    def dataset_spec(self) -> dict[str, Any]:
        return json.loads(self.catalog.meta("dataset") or "{}")

    def dataset(self) -> Dataset:
        """The workspace's dataset, reloaded from its source and checked against the catalog."""
        if self._dataset is None:
            spec = dict(self.dataset_spec)
            name = spec.pop("name", None)
            if name == "__memory__" or name is None:
                raise WorkspaceError(
                    "This workspace was created from in-memory data that is no longer loaded; "
                    "reopen it with Workspace.create(..., dataset=<Dataset>) in the same process."
                )
            self._dataset = load_dataset(name, **spec)
        return self._dataset

    def active_and_forgotten(self) -> tuple[Samples, Samples]:
        """(active training samples, forgotten samples still present in the source)."""
        ds = self.dataset()
        status = self.catalog.sample_status()
        ids = ds.train.ids.astype(str)
        unknown = [i for i in ids if i not in status]
        if unknown:
            raise DatasetError(
                f"The dataset source has samples the catalog does not know ({unknown[:3]}); "
                "the source changed since the workspace was created: restore it or start a new workspace."
            )
        active_mask = np.array([status[i] == "active" for i in ids], dtype=bool)
        missing = {i for i, s in status.items() if s == "active"} - set(ids)
        if missing:
            raise DatasetError(
                f"{len(missing)} active samples are missing from the dataset source "
                f"(e.g. {sorted(missing)[:3]}); restore the source or forget them first."
            )
        active = ds.train.subset(active_mask)
        expected = {
            r["sample_id"]: r["content_hash"]
            for r in self.catalog.query(
                "SELECT sample_id, content_hash FROM samples WHERE status='active'"
            )
        }
        changed = [
            sid
            for sid, h in zip(active.ids, content_hashes(active), strict=True)
            if expected[sid] != h
        ]
        if changed:
            raise IntegrityError(
                f"{len(changed)} samples changed in the dataset source since they were recorded "
                f"(e.g. {changed[:3]}); restore the original data or start a new workspace."
            )
        return active, ds.train.subset(~active_mask)

    def select(self, selector: ForgetSelector, *, active: Samples | None = None) -> list[str]:
        """Resolve a selector to sample IDs, rejecting empty, unknown and forgotten ones."""
        status = self.catalog.sample_status()
        chosen: list[str] = []
        if selector.ids:
            unknown = [i for i in selector.ids if i not in status]
            held_out = set(unknown) & set(self.dataset().test.ids.astype(str)) if unknown else set()
            if held_out:
                raise UnknownSampleError(
                    f"Sample IDs {sorted(held_out)[:5]} belong to the test split, which no model "
                    "was trained on; name training-set IDs (`unbake status --json`)."
                )
            if unknown:
                raise UnknownSampleError(
                    f"Unknown sample IDs {unknown[:5]}{' …' if len(unknown) > 5 else ''} "
                    f"({len(unknown)} in all); list valid IDs with `unbake status --json`."
                )
            gone = [i for i in selector.ids if status[i] == "forgotten"]
            if gone:
                raise UnknownSampleError(
                    f"Sample IDs {gone[:5]} were already forgotten; drop them from the request "
                    "(see `unbake log`)."
                )
            chosen += list(dict.fromkeys(selector.ids))
        if selector.subject is not None:
            rows = self.catalog.query(
                "SELECT sample_id FROM samples WHERE subject = ? ORDER BY row",
                (selector.subject,),
            )
            if not rows:
                done = [
                    r["request_id"]
                    for r in self.catalog.query("SELECT request_id, selector FROM requests")
                    if json.loads(r["selector"]).get("subject") == selector.subject
                ]
                if done:
                    raise UnknownSampleError(
                        f"Every sample of subject {selector.subject!r} was already forgotten "
                        f"(request {done[-1]}); see `unbake log`."
                    )
                raise UnknownSampleError(
                    f"No samples belong to subject {selector.subject!r}; check the subject ID."
                )
            # forgotten samples have their subject cleared, so every row here is active
            chosen += [r["sample_id"] for r in rows]
        if selector.label is not None:
            if active is None:
                active, _ = self.active_and_forgotten()
            n_classes = self.dataset().n_classes
            if not 0 <= selector.label < n_classes:
                raise InvalidParameterError(
                    f"Class {selector.label} does not exist; classes are 0..{n_classes - 1}."
                )
            chosen += [str(i) for i in active.ids[active.y == selector.label]]
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            raise EmptyRequestError(
                "The deletion request selects no samples; pass --ids, --ids-file, --subject "
                "or --class."
            )
        return chosen

    # --- models --------------------------------------------------------------------

    def _model_row(self, model_id: str | None):
        row = self.catalog.model(model_id) if model_id else self.catalog.latest_active_model()
        if row is None:
            if model_id:
                raise WorkspaceError(
                    f"No model {model_id!r} in {self.root}; list models with `unbake status`."
                )
            raise WorkspaceError(f"No model in {self.root} yet; train one with `unbake train`.")
        if row["status"] != "active":
            raise WorkspaceError(
                f"Model {row['model_id']} was purged after a deletion request; use the newest "
                "model (`unbake status`)."
            )
        return row

    def load_model(self, model_id: str | None = None, *, device=None) -> TrainedModel:
        """Load and hash-check a model (default: the newest active one)."""
        row = self._model_row(model_id)
        path = self.root / row["checkpoint"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"Checkpoint {path} of model {row['model_id']} is missing; restore it or retrain."
            ) from None
        model, _ = decode_checkpoint(
            data, expected_sha256=row["sha256"], source=f"Checkpoint {path}"
        )
        if device is not None:
            model.module.to(device)
        return model

    def _write_model(
        self, model: TrainedModel, model_id: str, parent: str | None
    ) -> tuple[str, str]:
        data = encode_checkpoint(model, model_id=model_id, parent_id=parent)
        rel = f"{CHECKPOINTS}/{model_id}.safetensors"
        atomic_write_bytes(self.root / rel, data)
        return rel, sha256_bytes(data)

    def _insert_model(
        self, cur, model: TrainedModel, model_id, parent, origin, rel, digest, n_train
    ):
        cur.execute(
            "INSERT INTO models(model_id, parent_id, created_at, origin, description, strategy, "
            "spec, config, seed, n_train, checkpoint, sha256, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active')",
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
            ),
        )

    def train(
        self,
        *,
        model: str | ModelSpec | nn.Module = "mlp",
        config: TrainConfig | None = None,
        seed: int = 0,
        strategy: str = "monolithic",
        strategy_params: dict[str, Any] | None = None,
        device=None,
    ) -> str:
        """Train a model on the active samples and record it; returns its model ID."""
        spec = ModelSpec(model) if isinstance(model, str) else model
        if not isinstance(spec, ModelSpec):
            spec = ModelSpec.from_module(spec)
        spec.to_dict()  # an in-memory nn.Module cannot be saved: fail before training
        with self._lock():
            active, _ = self.active_and_forgotten()
            trained = fit(  # builds and validates the strategy against `active` first
                active,
                n_classes=self.dataset().n_classes,
                model=spec,
                config=config or TrainConfig(),
                seed=seed,
                strategy=strategy,
                strategy_params=strategy_params,
                device=device,
            )
            return self._commit_trained(trained, active)

    def _commit_trained(self, trained: TrainedModel, active: Samples) -> str:
        model_id = _new_id("model")
        rel, digest = self._write_model(trained, model_id, None)
        try:
            with self.catalog.transaction() as cur:
                self._insert_model(cur, trained, model_id, None, "train", rel, digest, len(active))
        except BaseException:
            (self.root / rel).unlink(missing_ok=True)
            raise
        return model_id

    def forget(
        self,
        *,
        ids: Sequence[str] = (),
        subject: str | None = None,
        label: int | None = None,
        method: str = "retrain",
        params: dict[str, Any] | None = None,
        model_id: str | None = None,
        seed: int | None = None,
        device=None,
    ) -> RequestRecord:
        """File and apply a deletion request; every model that saw the data is purged.

        Nothing is written unless the request is valid and the method succeeds.
        """
        unlearner = METHODS.create(method, **(params or {}))
        selector = ForgetSelector(tuple(str(i) for i in ids), subject, label)
        with self._lock():
            active, _ = self.active_and_forgotten()
            sample_ids = self.select(selector, active=active)
            row = self._model_row(model_id)
            original = self.load_model(row["model_id"], device=device)
            forget, retain = active.split(sample_ids)
            test = self.dataset().test
            result = unlearner.unlearn(
                UnlearnTask(original, forget, retain, device=device), seed=seed
            )
            evaluation = evaluate(result.model, forget, retain, test)
            request_id = _new_id("req")
            new_id = _new_id("model")
            rel, digest = self._write_model(result.model, new_id, row["model_id"])
            try:
                stale = self._commit_forget(
                    request_id,
                    selector,
                    sample_ids,
                    unlearner,
                    row,
                    new_id,
                    rel,
                    digest,
                    result,
                    evaluation,
                    len(retain),
                )
            except BaseException:
                (self.root / rel).unlink(missing_ok=True)
                raise
            for path in stale:
                (self.root / path).unlink(missing_ok=True)
        return RequestRecord(
            request_id,
            row["model_id"],
            new_id,
            method,
            len(sample_ids),
            result.seconds,
            evaluation,
            result,
        )

    def _commit_forget(
        self,
        request_id,
        selector,
        sample_ids,
        unlearner,
        row,
        new_id,
        rel,
        digest,
        result,
        evaluation,
        n_retain,
    ) -> list[str]:
        now = utcnow()
        with self.catalog.transaction() as cur:
            self._insert_model(
                cur, result.model, new_id, row["model_id"], "forget", rel, digest, n_retain
            )
            purged_refs, ref_files = _purge_references(cur, sample_ids, request_id)
            result.info["purged_references"] = purged_refs  # the record names them
            cur.execute(
                "INSERT INTO requests(request_id, created_at, selector, n_samples, sample_ids, "
                "status, method, params, exact, model_before, hash_before, model_after, "
                "hash_after, seconds, metrics, info) "
                "VALUES (?, ?, ?, ?, ?, 'applied', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    now,
                    json.dumps(selector.to_dict()),
                    len(sample_ids),
                    json.dumps(sample_ids),
                    unlearner.name,
                    json.dumps(result.params, sort_keys=True, default=str),
                    int(unlearner.exact),
                    row["model_id"],
                    row["sha256"],
                    new_id,
                    digest,
                    result.seconds,
                    json.dumps(evaluation.to_dict()),
                    json.dumps(result.info, sort_keys=True, default=str),
                ),
            )
            cur.executemany(
                "UPDATE samples SET status='forgotten', content_hash=NULL, subject=NULL, "
                "request_id=?, forgotten_at=? WHERE sample_id=?",
                [(request_id, now, sid) for sid in sample_ids],
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
        return stale + ref_files

    # --- reading -------------------------------------------------------------------

    def evaluate(self, model_id: str | None = None) -> Evaluation:
        """FA (on every forgotten sample), RA, TA and MIA of a model."""
        model = self.load_model(model_id)
        active, forgotten = self.active_and_forgotten()
        return evaluate(model, forgotten, active, self.dataset().test)

    def audit(
        self,
        *,
        request_id: str | None = None,
        references: int = 8,
        model_id: str | None = None,
        seed: int = 0,
        backend: str = "local",
        workers: int = 1,
    ):
        """Audit a request (default: the latest) against retraining; records it on the request.

        See :func:`unbake.workspace.references.audit_request`.
        """
        from unbake.workspace.references import audit_request

        return audit_request(
            self,
            request_id=request_id,
            references=references,
            model_id=model_id,
            seed=seed,
            backend=backend,
            workers=workers,
        )

    def status(self) -> dict[str, Any]:
        counts = {
            r["status"]: r["n"]
            for r in self.catalog.query("SELECT status, COUNT(*) AS n FROM samples GROUP BY status")
        }
        return {
            "workspace": str(self.root),
            "dataset": self.dataset_spec,
            "samples": {"active": counts.get("active", 0), "forgotten": counts.get("forgotten", 0)},
            "subjects": self.catalog.query(
                "SELECT COUNT(DISTINCT subject) AS n FROM samples WHERE status='active' AND subject IS NOT NULL"
            )[0]["n"],
            "models": self.catalog.models(),
        }

    def log(self) -> list[dict[str, Any]]:
        return self.catalog.requests()
