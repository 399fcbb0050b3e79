"""The workspace's reference bank and the audit of a recorded deletion request.

Reference models are stored like every model: safetensors checkpoints (written
atomically, hash-checked on load), with a catalog row each in ``reference_models`` and
one ``reference_members`` row per sample it trained on, so that a deletion purges every
reference that saw a forgotten sample (see ``Workspace.forget``). A bank is reused by
any later audit of a model with the same recipe (architecture, configuration, strategy):
only the missing references are trained.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from unbake.data import Samples
from unbake.evaluation.audit import AuditReport, audit, check_references
from unbake.evaluation.bank import Recipe, ReferenceBank, train_bank
from unbake.exceptions import (
    DatasetError,
    UnknownNameError,
    WorkspaceError,
)
from unbake.methods import METHODS
from unbake.workspace import ledger
from unbake.workspace.atomic import atomic_write_bytes, sha256_bytes
from unbake.workspace.catalog import utcnow
from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint

if TYPE_CHECKING:
    from unbake.workspace.workspace import Workspace

__all__ = ["audit_request", "load_or_train_bank"]


def _request(ws: Workspace, request_id: str | None) -> dict[str, Any]:
    reqs = [r for r in ws.catalog.requests() if r["status"] == "applied"]
    if request_id is None:
        if not reqs:
            raise WorkspaceError(
                f"No deletion request in {ws.root} to audit; file one with `unbake forget`."
            )
        return reqs[-1]
    for r in reqs:
        if r["request_id"] == request_id:
            return r
    raise UnknownNameError(
        f"No deletion request {request_id!r} in {ws.root}; list them with `unbake log`."
    )


def load_or_train_bank(
    ws: Workspace,
    pool: Samples,
    recipe: Recipe,
    references: int,
    *,
    backend: str = "local",
    workers: int = 1,
) -> ReferenceBank:
    """``references`` active reference models of ``recipe`` over ``pool``; trains the missing.

    Call with the workspace lock held.
    """
    key = recipe.key()
    rows = ws.catalog.query(
        "SELECT * FROM reference_models WHERE recipe = ? AND status = 'active' ORDER BY seed",
        (key,),
    )[:references]
    models, seeds, names = [], [], []
    pos = {sid: i for i, sid in enumerate(pool.ids.astype(str))}
    membership = np.zeros((references, len(pool)), dtype=bool)
    for k, row in enumerate(rows):
        data = (ws.root / row["checkpoint"]).read_bytes()
        model, _ = decode_checkpoint(
            data, expected_sha256=row["sha256"], source=f"Reference {row['ref_id']}"
        )
        members = ws.catalog.query(
            "SELECT sample_id FROM reference_members WHERE ref_id = ?", (row["ref_id"],)
        )
        idx = [pos[m["sample_id"]] for m in members if m["sample_id"] in pos]
        membership[k, idx] = True
        models.append(model)
        seeds.append(int(row["seed"]))
        names.append(row["ref_id"])
    missing = references - len(rows)
    if missing > 0:
        used = ws.catalog.query(
            "SELECT COALESCE(MAX(seed), -1) AS s FROM reference_models WHERE recipe = ?", (key,)
        )[0]["s"]
        new_seeds = list(range(used + 1, used + 1 + missing))
        fresh = train_bank(pool, recipe, seeds=new_seeds, backend=backend, workers=workers)
        _store(ws, fresh, key)
        membership[len(rows) :] = fresh.membership
        models += fresh.models
        seeds += new_seeds
        names += fresh.names
    return ReferenceBank(pool.ids.astype(str), membership, models, seeds, names)


def _store(ws: Workspace, bank: ReferenceBank, key: str) -> None:
    """Write the new references' checkpoints, then record them in one transaction."""
    written = []
    try:
        for model in bank.models:
            ref_id = f"ref-{uuid.uuid4().hex[:12]}"
            data = encode_checkpoint(model, model_id=ref_id, parent_id=None)
            rel = f"checkpoints/{ref_id}.safetensors"
            atomic_write_bytes(ws.root / rel, data)
            written.append((ref_id, rel, sha256_bytes(data)))
        with ws.catalog.transaction() as cur:
            for (ref_id, rel, digest), seed, member in zip(
                written, bank.seeds, bank.membership, strict=True
            ):
                cur.execute(
                    "INSERT INTO reference_models(ref_id, recipe, seed, created_at, n_train, "
                    "checkpoint, sha256, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'active')",
                    (ref_id, key, seed, utcnow(), int(member.sum()), rel, digest),
                )
                cur.executemany(
                    "INSERT INTO reference_members(ref_id, sample_id) VALUES (?, ?)",
                    [(ref_id, str(s)) for s in bank.ids[member]],
                )
    except BaseException:
        for _, rel, _ in written:
            (ws.root / rel).unlink(missing_ok=True)
        raise
    bank.names = [w[0] for w in written]


def audit_request(
    ws: Workspace,
    *,
    request_id: str | None = None,
    references: int = 8,
    model_id: str | None = None,
    seed: int = 0,
    permutations: int = 256,
    backend: str = "local",
    workers: int = 1,
) -> AuditReport:
    """Audit a recorded request's method against retraining, and record the result on it."""
    check_references(references)
    with ws._lock():
        req = _request(ws, request_id)
        target = ws.load_model(model_id or req["model_after"])
        ds = ws.dataset()
        if tuple(target.input_shape) != tuple(ds.input_shape) or target.n_classes != ds.n_classes:
            raise DatasetError(
                f"The model takes inputs of shape {target.input_shape} with {target.n_classes} "
                f"classes, but dataset {ds.name!r} has {ds.input_shape} and {ds.n_classes}; "
                "audit a model trained on this workspace's dataset."
            )
        active, forgotten = ws.active_and_forgotten()
        forget = forgotten.subset(forgotten.mask_of(req["sample_ids"]))
        if len(forget) != len(req["sample_ids"]):
            raise DatasetError(
                f"Only {len(forget)} of the request's {len(req['sample_ids'])} samples are still "
                "in the dataset source; restore the source to audit this request."
            )
        recipe = Recipe.of(target)
        bank = load_or_train_bank(ws, active, recipe, references, backend=backend, workers=workers)
        unlearner = _unlearner(req)
        report = audit(
            recipe=recipe,
            forget=forget,
            pool=active,
            bank=bank,
            unlearner=unlearner,
            target=target,
            test=ds.test,
            seed=seed,
            permutations=permutations,
            backend=backend,
            workers=workers,
        )
        record = {**report.to_dict(), "model": model_id or req["model_after"], "at": utcnow()}
        with ws.catalog.transaction() as cur:
            cur.execute(
                "UPDATE requests SET audit = ? WHERE request_id = ?",
                (json.dumps(record, sort_keys=True, default=str), req["request_id"]),
            )
            verified = {"verdict": report.verdict, "model": record["model"]}
            ledger.append_entry(cur, req["request_id"], "verified", verified, record["at"])
    report.stats["request_id"] = req["request_id"]
    return report


def _unlearner(req: dict[str, Any]):
    """The request's method with its recorded parameters.

    Parameters were recorded as JSON (objects such as a feature extractor as their
    text), so a recorded string replaces a default only where the default is a string.
    """
    unlearner = METHODS.create(req["method"])
    defaults = unlearner.get_params()
    params = {
        k: v
        for k, v in (req.get("params") or {}).items()
        if k in defaults and (not isinstance(v, str) or isinstance(defaults[k], str))
    }
    return unlearner.set_params(**params)
